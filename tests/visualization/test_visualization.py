"""galw.visualization: every plot writes a PNG, and what it draws equals the inputs."""
import json
import os

import cv2
import numpy as np
import pytest

from galw.visualization import (
    gallery_size_metrics,
    gamma_series_from_groups,
    load_groups_json,
    load_metrics_records,
    load_search_json,
    plot_gallery_size_curve,
    plot_gradient_magnitudes,
    plot_s_star_dendrogram,
    plot_search_results,
    plot_sigma_and_weights,
    scalar_series,
    write_report,
)
from galw.visualization.figures import color_of
from galw.visualization.search_results import BORDER, BORDER_COLORS, crop_with_border
from tools_helpers import GAMMA_HISTORY, GROUPS, S_STAR, TESTG, write_groups_json, write_metrics_json
from tools_helpers import write_person_images, write_search_json


def _png_ok(path, min_bytes=5000):
    assert os.path.isfile(path)
    assert os.path.getsize(path) > min_bytes
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100


def test_gamma_curves_from_groups_json(tmp_path):
    data = load_groups_json(write_groups_json(str(tmp_path)))
    series = gamma_series_from_groups(data)
    assert series["loss_nae_box"] == ([1, 2, 3, 4], [1.0, 1.5, 2.0, 2.5])  # i=0 in sorted order
    drawn = plot_gradient_magnitudes(series, tmp_path / "g.png")
    assert set(drawn) == set(GAMMA_HISTORY)
    _png_ok(tmp_path / "g.png")


def test_gamma_curves_from_metrics_scalars(tmp_path):
    records = load_metrics_records(write_metrics_json(str(tmp_path)))
    series = scalar_series(records, "galw/gamma/")
    assert series == {"loss_rpn_cls": ([19, 39, 59], [2.0, 1.5, 1.0]),
                      "loss_nae_oim": ([19, 39, 59], [1.0, 1.25, 1.5])}
    plot_gradient_magnitudes(series, tmp_path / "g.png", xlabel="iteration")
    _png_ok(tmp_path / "g.png")


def test_dendrogram_leaves_and_colours_follow_groups(tmp_path):
    data = load_groups_json(write_groups_json(str(tmp_path)))
    out = plot_s_star_dendrogram(data, tmp_path / "d.png")
    _png_ok(tmp_path / "d.png")
    leaves = out["leaves"]
    assert sorted(leaves) == sorted(t for g in GROUPS for t in g)
    # Each chosen group is a contiguous run of leaves (the groups are clusters of the tree).
    for g, members in enumerate(GROUPS):
        pos = sorted(leaves.index(t) for t in members)
        assert pos == list(range(pos[0], pos[0] + len(members)))
        for t in members:
            assert out["leaf_colors"][t] == color_of(g)
    # 4 merges: the two pairs in their group colour; oim (0.1) joins the negative pair
    # (average distance 0.575 < 0.775), and the root, both across groups -> grey.
    assert sorted(out["link_colors"]) == sorted([color_of(0), color_of(1), "#555555", "#555555"])
    assert out["matches_tree_cut"] is True


def test_dendrogram_flags_groups_that_are_no_cut_of_the_tree(tmp_path):
    crossed = [["loss_rpn_cls", "loss_nae_det"], ["loss_rpn_box", "loss_nae_box"], ["loss_nae_oim"]]
    data = load_groups_json(write_groups_json(str(tmp_path), groups=crossed))
    out = plot_s_star_dendrogram(data, tmp_path / "d.png")
    assert out["matches_tree_cut"] is False
    assert out["leaf_colors"]["loss_rpn_cls"] == out["leaf_colors"]["loss_nae_det"] == color_of(0)
    # No link joins tasks of one group only: the pairs of the tree are split between groups.
    assert out["link_colors"] == ["#555555"] * 4


def test_dendrogram_rejects_unknown_linkage(tmp_path):
    data = load_groups_json(write_groups_json(str(tmp_path), linkage="nearest"))
    with pytest.raises(ValueError, match="linkage"):
        plot_s_star_dendrogram(data, tmp_path / "d.png", source="x.json")


def test_groups_json_validation_names_field(tmp_path):
    path = write_groups_json(str(tmp_path), groups=[["loss_rpn_cls"]], num_groups=1)
    with pytest.raises(ValueError, match="galw_groups.json.*in no group"):
        load_groups_json(path)
    path = write_groups_json(str(tmp_path), num_groups=4)
    with pytest.raises(ValueError, match="num_groups"):
        load_groups_json(path)
    with open(path, "w") as f:
        json.dump({"groups": []}, f)
    with pytest.raises(ValueError, match="missing field"):
        load_groups_json(path)


def test_sigma_and_weight_curves(tmp_path):
    records = load_metrics_records(write_metrics_json(str(tmp_path)))
    drawn = plot_sigma_and_weights(records, tmp_path / "w.png")
    _png_ok(tmp_path / "w.png")
    assert drawn["sigma"]["g1"] == ([19, 39, 59], [1.5, 1.6, 1.7])
    assert drawn["weight"]["loss_rpn_cls"][1] == pytest.approx([0.9, 0.8, 0.7])
    assert drawn["group_weight"]["g0"][1] == pytest.approx([1.0, 1 / 1.1, 1 / 1.2])
    assert set(drawn["weight"]) == {"loss_rpn_cls"}
    with pytest.raises(ValueError, match="galw/sigma"):
        plot_sigma_and_weights([{"iteration": 1, "total_loss": 1.0}], tmp_path / "x.png")


def test_metrics_json_truncated_last_line_is_skipped(tmp_path):
    path = write_metrics_json(str(tmp_path))
    with open(path, "a") as f:
        f.write('{"iteration": 79, "galw/sig')
    assert len(load_metrics_records(path)) == 4


def test_crop_border_colours():
    img = np.zeros((40, 30, 3), dtype=np.uint8)
    crop = crop_with_border(img, [5, 5, 15, 25], BORDER_COLORS[True], height=40)
    assert crop.shape == (40 + 2 * BORDER, 20 + 2 * BORDER, 3)
    assert tuple(crop[0, 0]) == BORDER_COLORS[True]
    assert tuple(crop[BORDER + 1, BORDER + 1]) == (0, 0, 0)


def test_search_results_picture(tmp_path):
    paths = write_person_images(str(tmp_path / "imgs"), [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 200, 200)])
    data = load_search_json(write_search_json(str(tmp_path / "run"), paths))
    layout = plot_search_results(data["queries"], tmp_path / "s.png", topk=2)
    _png_ok(tmp_path / "s.png")
    assert layout[0]["hits"] == [(paths[1], 0.9, True), (paths[2], 0.8, False)]
    assert layout[1]["hits"] == [(paths[1], 0.9, False), (paths[2], 0.8, True)]
    os.remove(paths[2])
    with pytest.raises(FileNotFoundError, match="img_02"):
        plot_search_results(data["queries"], tmp_path / "s2.png", topk=2)


def test_gallery_size_curve_points_equal_inputs(tmp_path):
    nested = {f"search_TestG{n}": {"mAP": v} for n, v in TESTG.items()}
    flat = {f"search_TestG{n}/mAP": v - 3 for n, v in TESTG.items()}
    flat["synth_cuhk_gallery/search_TestG50/top1"] = 1.0  # another metric: ignored
    a, b = gallery_size_metrics(nested), gallery_size_metrics(flat)
    assert a == sorted(TESTG.items())
    drawn = plot_gallery_size_curve([("GALW", a), ("equal", b)], tmp_path / "f4.png")
    _png_ok(tmp_path / "f4.png")
    assert drawn["GALW"] == sorted(TESTG.items())
    assert drawn["equal"] == [(n, v - 3) for n, v in sorted(TESTG.items())]
    with pytest.raises(ValueError, match="run.json.*search_TestG"):
        gallery_size_metrics({"search": {"mAP": 1.0}}, source="run.json")


def test_write_report_full_run(tmp_path):
    run = str(tmp_path / "run")
    write_groups_json(run)
    write_metrics_json(run, eval_map=42.0)
    paths = write_person_images(str(tmp_path / "imgs"), [(0, 0, 255), (0, 255, 0), (255, 0, 0)])
    write_search_json(run, paths)
    report = str(tmp_path / "report")
    summary = write_report(run, report)
    assert summary["skipped"] == {}
    for name in ("gradient_magnitudes", "s_star_dendrogram", "sigma_and_weights",
                 "search_results_synth_cuhk_gallery", "map_vs_gallery_size_synth_cuhk_gallery"):
        _png_ok(os.path.join(report, summary["figures"][name]))
    with open(os.path.join(report, "summary.json")) as f:
        saved = json.load(f)
    assert saved["search_metrics"]["synth_cuhk_gallery"]["search"]["mAP"] == 76.5
    assert saved["last_eval"]["search/mAP"] == 42.0
    assert saved["groups"]["groups"] == GROUPS
    assert saved["final_sigma"] == {"g0": 1.2, "g1": 1.7}
    assert saved["groups"]["matches_tree_cut"] is True


def test_write_report_finds_groups_of_a_first_training_in_a_subfolder(tmp_path):
    run = str(tmp_path / "run")
    write_groups_json(os.path.join(run, "galw_phase1"))
    write_metrics_json(run)
    summary = write_report(run, str(tmp_path / "report"))
    assert "s_star_dendrogram" in summary["figures"] and "gradient_magnitudes" in summary["figures"]
    assert summary["groups"]["file"] == os.path.join(run, "galw_phase1", "galw_groups.json")


def test_write_report_per_task_run_skips_only_the_dendrogram(tmp_path):
    """A per-task (or manual) weighting run's galw_groups.json has the groups but no clustering:
    no s*, empty Gamma histories. The report skips the s* dendrogram, saying why, and keeps the
    groups and the sigma/weight curves (a demo with MODEL.GALW.GROUPING per_task crashed here)."""
    run = str(tmp_path / "run")
    per_task = [[t] for t in sorted(GAMMA_HISTORY)]
    write_groups_json(os.path.join(run, "galw_phase1"), groups=per_task, num_groups=len(per_task),
                      slopes={}, s_star={}, gamma_history={t: [] for t in GAMMA_HISTORY})
    write_metrics_json(run)
    summary = write_report(run, str(tmp_path / "report"))
    assert "no s*" in summary["skipped"]["s_star_dendrogram"]
    assert "s_star_dendrogram" not in summary["figures"]
    assert {"sigma_and_weights", "gradient_magnitudes"} <= set(summary["figures"])
    assert summary["groups"]["groups"] == per_task and summary["groups"]["s_star"] == {}


def test_groups_json_with_s_star_for_some_grouped_tasks_only_is_an_error(tmp_path):
    s_star = dict(S_STAR)
    s_star.pop("loss_nae_oim")
    path = write_groups_json(str(tmp_path / "run"), s_star=s_star)
    with pytest.raises(ValueError, match=r"loss_nae_oim.*no value in 's_star'"):
        load_groups_json(path)


def test_write_report_prw_run_has_no_gallery_size_curve(tmp_path):
    run = str(tmp_path / "run")
    paths = write_person_images(str(tmp_path / "imgs"), [(0, 0, 255), (0, 255, 0)])
    write_search_json(run, paths, dataset="prw_gallery", testg={})
    summary = write_report(run, str(tmp_path / "report"))
    assert set(summary["figures"]) == {"search_results_prw_gallery"}
    assert "not a CUHK-SYSU" in summary["skipped"]["map_vs_gallery_size_prw_gallery"]


def test_write_report_partial_run_says_what_is_missing(tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    with open(os.path.join(run, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n")
    summary = write_report(run, str(tmp_path / "report"))
    assert summary["figures"] == {}
    assert set(summary["skipped"]) == {"gradient_magnitudes", "s_star_dendrogram", "sigma_and_weights",
                                       "search_results"}
    with pytest.raises(FileNotFoundError, match="nope"):
        write_report(str(tmp_path / "nope"), str(tmp_path / "r2"))


def test_similarity_histograms_one_panel_per_model(tmp_path):
    from galw.visualization import plot_similarity_histograms

    edges = [-1.0, 0.0, 0.5, 1.0]
    hists = {
        "collapsed": {"bin_edges": edges, "positive": [0, 0, 3], "negative": [0, 0, 9],
                      "mean_positive": 0.99, "mean_negative": 0.98},
        "separated": {"bin_edges": edges, "positive": [0, 0, 2], "negative": [5, 1, 0],
                      "mean_positive": 0.9, "mean_negative": -0.2},
    }
    out = str(tmp_path / "sims.png")
    drawn = plot_similarity_histograms(hists, out)
    assert drawn == {"collapsed": (0.99, 0.98), "separated": (0.9, -0.2)}
    img = cv2.imread(out)
    assert img is not None and img.shape[1] > img.shape[0] > 100  # two panels side by side
    bad = {"x": {"bin_edges": edges, "positive": [1, 2], "negative": [1, 2]}}
    with pytest.raises(ValueError, match="similarity histogram of 'x': 4 bin edges for 2 positive"):
        plot_similarity_histograms(bad, out)
    with pytest.raises(ValueError, match="no histograms"):
        plot_similarity_histograms({}, out)


def test_similarity_panel_without_detections_says_why(tmp_path, monkeypatch):
    """The untrained model detects nothing above the search threshold: its panel says so
    instead of showing empty axes."""
    import galw.visualization.similarity as similarity

    figures = []
    monkeypatch.setattr(similarity, "save_figure", lambda fig, path: figures.append(fig))
    edges = [-1.0, 0.0, 1.0]
    hists = {
        "untrained": {"bin_edges": edges, "positive": [0, 0], "negative": [0, 0],
                      "mean_positive": None, "mean_negative": None},
        "trained": {"bin_edges": edges, "positive": [0, 2], "negative": [3, 1],
                    "mean_positive": 0.8, "mean_negative": 0.1},
    }
    similarity.plot_similarity_histograms(hists, str(tmp_path / "s.png"))
    titles = [ax.get_title() for ax in figures[0].axes]
    assert titles[0] == f"untrained\n{similarity.EMPTY_PANEL}"
    assert titles[1] == "trained\nmean 0.800 (match) vs 0.100 (other)"
