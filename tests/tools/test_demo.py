"""tools/demo.py end to end at a tiny size: dataset, untrained floor, colour baseline, both GALW trainings, report."""
import importlib.util
import json
import os

import cv2
import pytest

from conftest import ROI_ALIGNPS_TASKS as TASKS
from conftest import ROOT

# Tiny images and schedule: phase one 3 epochs of 1 iteration (Gamma every iteration), phase two 2.
TINY_OPTS = [
    "INPUT.PS.TRAIN_LONG_SIDE_RANGE", "(96, 96)", "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", "(72, 72)",
    "INPUT.PS.TEST_LONG_SIDE", "96", "INPUT.PS.TEST_SHORT_SIDE", "72",
    "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)",
    "MODEL.GALW.EPOCH_ITERS", "1", "MODEL.GALW.PROBE_PERIOD", "1", "MODEL.GALW.PROBE_EPOCHS", "3",
]


def _load_demo():
    spec = importlib.util.spec_from_file_location("galw_demo", os.path.join(ROOT, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_cfg_lets_overrides_set_the_training_seed_and_refuses_keys_the_demo_owns(tmp_path):
    """--seed is the default training seed; an explicit SEED override wins, as every config
    override does. The demo's datasets and output folder are its own: overriding them is an error."""
    demo = _load_demo()
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
    demo = _load_demo()
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


@pytest.mark.slow  # 245 s at load ~7, 759 s at load ~25 on the 2-core machine
def test_demo_tiny_end_to_end(tmp_path, capsys):
    demo = _load_demo()
    out, data = str(tmp_path / "demo"), str(tmp_path / "SynthPS-PRW")
    summary = demo.run_demo(out=out, data_root=data, size="tiny", seed=3, opts=TINY_OPTS)
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


def test_dataset_reused_only_with_same_size_and_seed(tmp_path):
    demo = _load_demo()
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
