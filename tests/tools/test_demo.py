"""galw.demo end to end at a tiny size: dataset, untrained floor, colour baseline, both GALW trainings,
report, the config.yaml beside the weights and the headline result file."""
import json
import os
import shlex

import cv2
import pytest

from conftest import ROI_ALIGNPS_TASKS as TASKS
from conftest import ROOT
from galw import demo
from galw.results import read_result

# Tiny images and schedule: phase one 3 epochs of 1 iteration (Gamma every iteration), phase two 2.
TINY_OPTS = [
    "INPUT.PS.TRAIN_LONG_SIDE_RANGE", "(96, 96)", "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", "(72, 72)",
    "INPUT.PS.TEST_LONG_SIDE", "96", "INPUT.PS.TEST_SHORT_SIDE", "72",
    "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)",
    "MODEL.GALW.EPOCH_ITERS", "1", "MODEL.GALW.PROBE_PERIOD", "1", "MODEL.GALW.PROBE_EPOCHS", "3",
]


def _load_config_yaml(path):
    """A config.yaml as a user loads it: get_cfg() + add_galw_config + merge_from_file."""
    from detectron2.config import get_cfg

    from galw import add_galw_config

    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _plain(node):
    """A config as nested dicts and lists: merge_from_file makes a value's outer sequence the default's
    tuple but leaves inner pairs lists (yacs; detectron2's own MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
    comes back so from any config.yaml), so configs are compared by content."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def test_build_cfg_lets_overrides_set_the_training_seed_and_refuses_keys_the_demo_owns(tmp_path):
    """--seed is the default training seed; an explicit SEED override wins, as every config
    override does. The demo's datasets and output folder are its own: overriding them is an error."""
    out = str(tmp_path / "run")
    assert demo.build_cfg(demo.DEFAULT_CONFIG, out, 3, []).SEED == 3
    cfg = demo.build_cfg(demo.DEFAULT_CONFIG, out, 3, ["SEED", "5", "SOLVER.MAX_ITER", "7"])
    assert (cfg.SEED, cfg.SOLVER.MAX_ITER, cfg.OUTPUT_DIR) == (5, 7, out)
    assert cfg.DATASETS.TRAIN == (f"{demo.PREFIX}_train",)
    for key in ("DATASETS.TRAIN", "DATASETS.TEST", "OUTPUT_DIR"):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            demo.build_cfg(demo.DEFAULT_CONFIG, out, 3, [key, "x"])


def test_summary_lists_groups_without_s_star_of_a_per_task_run(tmp_path):
    """A demo with MODEL.GALW.GROUPING per_task has groups but no s*: the summary lists them as not
    clustered instead of failing after the training."""
    run = {"metrics": {"search": {"mAP": 5.0, "top1": 10.0, "top5": 20.0, "top10": 30.0},
                       "detection": {"AP": 80.0, "recall": 99.0}}}
    per_task = [[t] for t in TASKS]
    report = {"groups": {"groups": per_task, "s_star": {}}, "figures": {}, "skipped": {}}
    info = {"config_file": demo.DEFAULT_CONFIG, "dataset": {"size": "tiny", "seed": 0, "num_queries": 4},
            "phase_one_iters": 3, "phase_two_iters": 2, "stage_seconds": {"train": 1.0}, "wall_time_s": 2.0,
            "machine": {"cpus": 2, "torch_threads": 1, "load_start": [0.1], "load_end": [0.2]}}
    summary = demo.write_summary(str(tmp_path), run, run, run, report, info)
    assert summary["groups"] == per_task and summary["s_star"] == {}
    text = open(tmp_path / "demo_summary.md").read()
    assert f"GALW groups (G = {len(TASKS)}, not clustered: no s*):" in text
    assert f"- g0: {TASKS[0]}\n" in text and "s*=" not in text


def test_config_yaml_beside_the_weights_loads_back_to_the_runs_config(tmp_path):
    """galw/config.yaml is the run's whole config: loading it as a user does gives the same config
    (overrides, the demo's datasets and folder included)."""
    cfg = demo.build_cfg(demo.DEFAULT_CONFIG, str(tmp_path / "galw"), 4,
                         ["SOLVER.MAX_ITER", "7", "MODEL.GALW.NUM_GROUPS", "3", "SOLVER.STEPS", "(5,)"])
    path = demo.save_config(cfg)
    assert path == os.path.join(str(tmp_path / "galw"), demo.CONFIG_FILENAME)
    loaded = _load_config_yaml(path)
    assert _plain(loaded) == _plain(cfg)
    assert (loaded.SEED, loaded.SOLVER.MAX_ITER, loaded.MODEL.GALW.NUM_GROUPS, loaded.SOLVER.STEPS) == (4, 7, 3, (5,))
    assert loaded.DATASETS.TEST == (f"{demo.PREFIX}_gallery",) and loaded.OUTPUT_DIR == str(tmp_path / "galw")
    assert not [n for n in os.listdir(tmp_path / "galw") if ".tmp." in n]


def _search_json(m_ap, top1, det_ap, positive, negative, mean_pos, mean_neg):
    return {"metrics": {"search": {"mAP": m_ap, "top1": top1, "top5": top1 + 1, "top10": top1 + 2},
                        "detection": {"AP": det_ap, "recall": 90.0}},
            "similarity_histogram": {"bin_edges": [-1.0, 0.0, 1.0], "positive": positive, "negative": negative,
                                     "mean_positive": mean_pos, "mean_negative": mean_neg},
            "queries": []}


def test_demo_result_file_holds_the_headline_figures(tmp_path):
    runs = {"trained": _search_json(40.0, 60.0, 85.0, [1, 5], [30, 10], 0.6, -0.1),
            "untrained": _search_json(5.0, 8.0, 1.5, [3, 3], [20, 20], 0.01, 0.0),
            "colour_baseline": _search_json(30.0, 50.0, 100.0, [0, 6], [25, 15], 0.7, 0.2)}
    groups = [["loss_rpn_cls", "loss_rpn_box"], ["loss_aps_oim"]]
    report = {"groups": {"groups": groups, "s_star": {"loss_rpn_cls": 0.1, "loss_rpn_box": 0.2,
                                                      "loss_aps_oim": -0.3}},
              "figures": {}, "skipped": {}}
    info = {"config_file": demo.DEFAULT_CONFIG, "opts": ["SOLVER.MAX_ITER", "7"],
            "dataset": {"root": str(tmp_path), "size": "tiny", "seed": 2, "state": "generated", "num_queries": 4},
            "phase_one_iters": 3, "phase_two_iters": 7, "stage_seconds": {"train": 11.0}, "wall_time_s": 12.34,
            "machine": {"cpus": 2, "torch_threads": 1, "load_start": [0.1], "load_end": [0.2]}}
    summary = demo.write_summary(str(tmp_path), runs["untrained"], runs["colour_baseline"], runs["trained"],
                                 report, info)
    path = demo.write_demo_result(runs, summary, root=str(tmp_path / "results"))
    assert path == str(tmp_path / "results" / "demo" / "tiny_seed2.json")
    doc = read_result(path)
    assert doc["command"] == "python tools/demo.py --size tiny --seed 2 SOLVER.MAX_ITER 7"
    assert shlex.split(doc["command"])[1] == "tools/demo.py"
    assert doc["meta"]["commit"] and doc["meta"]["cpu"] and doc["meta"]["torch"]
    data = doc["data"]
    assert sorted(data) == ["config_file", "dataset", "groups", "models", "opts", "phase_one_iters",
                            "phase_two_iters", "s_star", "stage_seconds", "wall_time_s"]
    assert data["config_file"] == os.path.relpath(demo.DEFAULT_CONFIG, ROOT)
    assert data["dataset"] == {"size": "tiny", "seed": 2, "num_queries": 4}
    assert (data["phase_one_iters"], data["phase_two_iters"], data["wall_time_s"]) == (3, 7, 12.3)
    assert data["groups"] == groups and data["s_star"]["loss_aps_oim"] == -0.3
    assert sorted(data["models"]) == ["colour_baseline", "trained", "untrained"]
    trained = data["models"]["trained"]
    assert (trained["mAP"], trained["top1"], trained["detection_AP"]) == (40.0, 60.0, 85.0)
    assert (data["models"]["untrained"]["mAP"], data["models"]["colour_baseline"]["top1"]) == (5.0, 50.0)
    assert trained["similarity"] == {"bin_edges": [-1.0, 0.0, 1.0], "true_match": [1, 5], "other_people": [30, 10],
                                     "mean_true_match": 0.6, "mean_other_people": -0.1}
    assert (trained["similarity_match"], trained["similarity_other"]) == (0.6, -0.1)
    md = open(tmp_path / "demo_summary.md").read().splitlines()
    assert md[2] == ("Verdict: the trained model beats the colour-histogram gauge: search mAP 40.00 vs 30.00 "
                     "(+10.00), top-1 60.00 vs 50.00.")


def test_verdict_says_when_the_trained_model_does_not_beat_the_gauge():
    text = demo.verdict({"mAP": 17.04, "top1": 31.25}, {"mAP": 44.49, "top1": 95.0})
    assert text == ("Verdict: the trained model does not beat the colour-histogram gauge: search mAP 17.04 vs "
                    "44.49 (-27.45), top-1 31.25 vs 95.00.")
    assert demo.verdict({"mAP": None}, {"mAP": 1.0}) == "Verdict: n/a (a search mAP is missing)."


@pytest.mark.slow  # two trainings, three evaluations and a report: 11 s with one torch thread
def test_demo_tiny_end_to_end(tmp_path, capsys):
    out, data = str(tmp_path / "demo"), str(tmp_path / "SynthPS-PRW")
    results_root = str(tmp_path / "results")
    summary = demo.run_demo(out=out, data_root=data, size="tiny", seed=3, opts=TINY_OPTS, results_root=results_root)
    printed = capsys.readouterr().out
    for n in range(1, demo.NUM_STAGES + 1):  # numbered stages with elapsed time
        assert f"[demo {n}/{demo.NUM_STAGES}]" in printed
    assert "elapsed 00:" in printed

    # Algorithm 1: phase one recorded 3 epochs of Gamma for the 10 tasks and grouped them into 4.
    with open(os.path.join(out, "galw", "galw_phase1", "galw_groups.json")) as f:
        phase_one = json.load(f)
    assert sorted(phase_one["gamma_history"]) == sorted(TASKS)
    assert all(len(v) == 3 for v in phase_one["gamma_history"].values())
    groups = phase_one["groups"]
    assert phase_one["num_groups"] == 4 and len(groups) == 4
    assert sorted(t for g in groups for t in g) == sorted(TASKS)  # a partition of the 10 tasks
    # phase two trained with those groups from phase one's initial weights and wrote its own file
    with open(os.path.join(out, "galw", "galw_groups.json")) as f:
        assert json.load(f)["groups"] == groups
    assert os.path.isfile(os.path.join(out, "galw", "galw_phase1", "galw_init.pth"))
    assert os.path.isfile(os.path.join(out, "galw", "model_final.pth"))

    report = os.path.join(out, "report")
    with open(os.path.join(report, "demo_summary.json")) as f:
        saved = json.load(f)
    assert saved["groups"] == groups == summary["groups"]
    results = saved["results"]
    assert set(results) == {demo.ROW_UNTRAINED, demo.ROW_BASELINE, demo.ROW_TRAINED}
    for r in results.values():
        assert 0.0 <= r["mAP"] <= 100.0 and 0.0 <= r["top1"] <= 100.0
        for key in ("similarity_match", "similarity_other"):  # None: a model matched no GT person
            assert r[key] is None or -1.0 <= r[key] <= 1.0
    # The colour baseline searches with the GT boxes: detection is perfect, and on SynthPS (persons
    # keep their clothes) its true matches are more similar than other people.
    baseline = results[demo.ROW_BASELINE]
    assert baseline["detection_AP"] == 100.0 and baseline["detection_recall"] == 100.0
    assert baseline["similarity_match"] > baseline["similarity_other"]
    with open(os.path.join(out, "colour_baseline", "inference", "search_demo_synth_prw_gallery.json")) as f:
        assert json.load(f)["metrics"]["search"]["mAP"] == baseline["mAP"]
    assert saved["dataset"] == {"root": os.path.abspath(data), "size": "tiny", "seed": 3, "state": "generated",
                                "num_queries": saved["dataset"]["num_queries"]}
    assert saved["dataset"]["num_queries"] > 0
    assert saved["phase_one_iters"] == 3 and saved["phase_two_iters"] == 2
    md = open(os.path.join(report, "demo_summary.md")).read()
    assert all(row in md for row in results)
    assert f"{results[demo.ROW_UNTRAINED]['mAP']:.2f}" in md and f"{baseline['mAP']:.2f}" in md
    assert f"{baseline['similarity_match']:.3f}" in md

    for png in ("gradient_magnitudes.png", "s_star_dendrogram.png", "sigma_and_weights.png",
                "search_results_demo_synth_prw_gallery.png", "search_results_untrained.png",
                "similarity_histograms.png"):
        img = cv2.imread(os.path.join(report, png))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 50, png
    assert os.path.isfile(os.path.join(report, "summary.json"))  # write_report's own summary

    # the full config beside the weights, as the run used it
    loaded = _load_config_yaml(os.path.join(out, "galw", demo.CONFIG_FILENAME))
    assert _plain(loaded) == _plain(demo.build_cfg(demo.DEFAULT_CONFIG, os.path.join(out, "galw"), 3, TINY_OPTS))
    # the headline figures as a result file
    assert summary["result_file"] == os.path.join(results_root, "demo", "tiny_seed3.json")
    doc = read_result(summary["result_file"])
    models = doc["data"]["models"]
    for key, row in (("trained", demo.ROW_TRAINED), ("untrained", demo.ROW_UNTRAINED),
                     ("colour_baseline", demo.ROW_BASELINE)):
        expected = saved["results"][row]
        assert {k: models[key][k] for k in expected} == expected, key
    assert models["colour_baseline"]["similarity"]["mean_true_match"] == baseline["similarity_match"]
    assert sum(models["colour_baseline"]["similarity"]["true_match"]) > 0
    assert doc["data"]["groups"] == groups and doc["data"]["wall_time_s"] > 0


def test_dataset_reused_only_with_same_size_and_seed(tmp_path):
    root = str(tmp_path / "SynthPS-PRW")
    assert demo.prepare_dataset(root, "tiny", 1) == "generated"
    assert demo.prepare_dataset(root, "tiny", 1) == "reused"
    assert demo.prepare_dataset(root, "tiny", 2) == "generated"  # other seed: written again
    with open(os.path.join(root, demo.STAMP)) as f:
        assert json.load(f) == {"layout": "prw", "size": "tiny", "seed": 2}
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "frames").mkdir()
    try:
        demo.prepare_dataset(str(foreign), "tiny", 1)
    except FileExistsError as e:
        assert str(foreign) in str(e) and demo.STAMP in str(e)
    else:
        raise AssertionError("an unstamped non-empty folder must not be overwritten")
