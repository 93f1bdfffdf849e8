"""tools/plot_galw.py and tools/plot_gallery_size.py on fake run folders."""
import json
import os

import pytest

from tools_helpers import TESTG, load_tool, write_groups_json, write_metrics_json, write_person_images, write_search_json

plot_galw = load_tool("plot_galw")
plot_gallery_size = load_tool("plot_gallery_size")


def test_plot_galw_writes_report_into_run_dir(tmp_path, capsys):
    run = str(tmp_path / "run")
    write_groups_json(run)
    write_metrics_json(run)
    summary = plot_galw.main([run])
    report = os.path.join(run, "report")
    assert set(summary["figures"]) == {"gradient_magnitudes", "s_star_dendrogram", "sigma_and_weights"}
    for rel in summary["figures"].values():
        assert os.path.getsize(os.path.join(report, rel)) > 5000
    assert "skipped search_results: no inference/search_*.json" in capsys.readouterr().out


def test_plot_gallery_size_from_search_json_and_metrics_json(tmp_path, capsys):
    imgs = write_person_images(str(tmp_path / "imgs"), [(0, 0, 255), (0, 255, 0)])
    run_a = str(tmp_path / "runA")
    search_json = write_search_json(run_a, imgs)
    run_b = str(tmp_path / "runB")
    os.makedirs(run_b)
    flat = {"iteration": 99, **{f"search_TestG{n}/mAP": v - 10 for n, v in TESTG.items()}}
    with open(os.path.join(run_b, "metrics.json"), "w") as f:
        f.write(json.dumps(flat) + "\n" + json.dumps({"iteration": 100, "total_loss": 1.0}) + "\n")
    out = str(tmp_path / "fig4.png")
    drawn = plot_gallery_size.main([search_json, os.path.join(run_b, "metrics.json"), "--out", out])
    assert drawn == {"runA": sorted(TESTG.items()), "runB": [(n, v - 10) for n, v in sorted(TESTG.items())]}
    assert os.path.getsize(out) > 5000
    printed = capsys.readouterr().out
    assert "| runA | 80.00 | 76.50 | 70.25 | 66.00 | 61.50 | 57.00 |" in printed

    drawn = plot_gallery_size.main([search_json, "--labels", "GALW", "--metric", "top1", "--out", out])
    assert drawn == {"GALW": [(n, v + 5) for n, v in sorted(TESTG.items())]}
    with pytest.raises(SystemExit):
        plot_gallery_size.main([search_json, "--labels", "a", "b", "--out", out])


def test_plot_gallery_size_rejects_prw_results(tmp_path):
    imgs = write_person_images(str(tmp_path / "imgs"), [(0, 0, 255), (0, 255, 0)])
    path = write_search_json(str(tmp_path / "prw"), imgs, dataset="prw_gallery", testg={})
    with pytest.raises(ValueError, match="search_prw_gallery.json.*search_TestG"):
        plot_gallery_size.main([path, "--out", str(tmp_path / "x.png")])
