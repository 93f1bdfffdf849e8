"""train_net.main trains the shipped synthetic configs (NAE, AlignPS w/ GALW, ROI-AlignPS*-Attr) on
the tiny synthetic dataset, then ``--eval-only`` from the saved weights gives the search metrics
again (the checkpoint round-trips: the same numbers as the evaluation after training)."""
import json
import os

import pytest

import train_net
from conftest import CONFIG_DIR

GALLERY = "synth_prw_gallery"

#: Tiny frames are 192x144: train and test at their native size, 2 images per batch.
SMALL = [
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", 1000,
    "INPUT.PS.TRAIN_LONG_SIDE_RANGE", "(192, 192)", "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", "(144, 144)",
    "INPUT.PS.TEST_LONG_SIDE", 192, "INPUT.PS.TEST_SHORT_SIDE", 144, "SEED", 3,
]


def _args(config, *opts, eval_only=False):
    argv = ["--config-file", os.path.join(CONFIG_DIR, config)] + (["--eval-only"] if eval_only else [])
    return train_net.default_argument_parser().parse_args(argv + [str(o) for o in opts])


def _last_eval_line(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return next(rec for rec in reversed(lines) if f"{GALLERY}/search/mAP" in rec or "search/mAP" in rec)


def _train_then_eval_only(config, out, *opts):
    train_net.main(_args(config, "OUTPUT_DIR", out, *SMALL, *opts))
    weights = os.path.join(out, "model_final.pth")
    assert os.path.isfile(weights)
    after_training = _last_eval_line(out)
    eval_dir = os.path.join(out, "eval_only")
    res = train_net.main(_args(config, "OUTPUT_DIR", eval_dir, "MODEL.WEIGHTS", weights, *SMALL, *opts, eval_only=True))
    assert set(res) >= {"search", "detection"}
    assert set(res["search"]) == {"mAP", "top1", "top5", "top10"}
    for value in list(res["search"].values()) + list(res["detection"].values()):
        assert 0.0 <= value <= 100.0
    assert res["search"]["top1"] <= res["search"]["top5"] <= res["search"]["top10"]
    # The saved weights give exactly the evaluation that ran right after training.
    prefix = f"{GALLERY}/" if f"{GALLERY}/search/mAP" in after_training else ""
    for key in ("mAP", "top1", "top10"):
        assert res["search"][key] == pytest.approx(after_training[f"{prefix}search/{key}"], abs=1e-6), key
    with open(os.path.join(eval_dir, "inference", f"search_{GALLERY}.json")) as f:
        search = json.load(f)
    assert search["dataset"] == GALLERY and search["metrics"]["search"] == res["search"]
    assert len(search["queries"]) > 0
    return res


@pytest.mark.slow
def test_nae_trains_and_evaluates(tiny_synth_prw, tmp_path):
    _train_then_eval_only("nae/nae_R18_synth_cpu.yaml", str(tmp_path), "SOLVER.MAX_ITER", 2,
                          "MODEL.OIM.QUEUE_SIZE", 16)


@pytest.mark.slow
def test_alignps_galw_runs_both_trainings(tiny_synth_prw, tmp_path):
    """AlignPS w/ GALW: phase one (2 epochs of 2 iterations, Gamma every iteration) writes the
    groups, phase two trains 4 iterations with RULWF over them; then --eval-only."""
    out = str(tmp_path)
    _train_then_eval_only("alignps/alignps_R18_synth_galw.yaml", out, "SOLVER.MAX_ITER", 4,
                          "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16, "MODEL.GALW.EPOCH_ITERS", 2,
                          "MODEL.GALW.PROBE_PERIOD", 1)
    with open(os.path.join(out, "galw_phase1", "galw_groups.json")) as f:
        phase_one = json.load(f)
    tasks = ["loss_aps_cls", "loss_aps_box", "loss_aps_ctr", "loss_aps_oim", "loss_aps_tri"]
    assert sorted(phase_one["gamma_history"]) == sorted(tasks)
    assert all(len(h) == 2 for h in phase_one["gamma_history"].values())  # 4 iterations = 2 epochs
    assert phase_one["num_groups"] == 3 and sorted(t for g in phase_one["groups"] for t in g) == sorted(tasks)
    with open(os.path.join(out, "metrics.json")) as f:
        weights = [json.loads(line) for line in f if "galw/sigma/g2" in line]
    assert weights, "phase two logs one sigma per group (g0..g2)"
    assert os.path.isfile(os.path.join(out, "galw_phase1", "galw_init.pth"))


def test_roi_alignps_attr_trains_and_evaluates(tiny_synth_prw, tmp_path):
    """Eleven tasks train; after 2 iterations no detection may match a person yet, so the attribute
    metrics may be absent (logged), but the evaluation must not fail and search metrics come back."""
    out = str(tmp_path)
    res = _train_then_eval_only("attr/roi_alignps_attr_R18_synth_cpu.yaml", out, "SOLVER.MAX_ITER", 2,
                                "MODEL.OIM.QUEUE_SIZE", 16, "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16)
    with open(os.path.join(out, "metrics.json")) as f:
        first = json.loads(f.readline())
    assert first["loss_attr"] > 0  # the attribute task trained on the dataset's true attributes
    if "attributes" in res:
        assert res["attributes"]
