"""Bad settings and non-finite training fail early and say where.

Cases:
- test_two_phase_probe_epochs_one_fails_at_build_naming_key
- test_two_phase_training_under_two_epochs_fails_at_build_naming_max_iter
- test_single_run_max_iter_before_probing_done_fails_at_build_naming_key
- test_negative_lambda_fails_at_build_naming_key
- test_groups_file_errors_name_the_file (missing, not JSON, tasks that do not fit MODEL.GALW.TASKS)
- test_non_finite_weighted_total_raises_naming_task_and_group (raw losses finite; no step taken)
- test_non_finite_sigma_raises_naming_group (ULWF: the total stays finite)
- test_huge_learning_rate_stops_before_a_non_finite_checkpoint
- test_checkpointer_refuses_non_finite_tensors_naming_them
- test_stale_phase_one_with_other_settings_fails_naming_file_and_keys
- test_matching_phase_one_is_reused_without_resume
- test_stale_phase_one_is_reused_with_resume
"""
import json
import os

import pytest
import torch
from detectron2.engine.hooks import PeriodicCheckpointer

from galw.checkpoint import AtomicCheckpointer
from galw_core.two_phase import PHASE_ONE_DIR, PHASE_ONE_RECORD, train_two_phase
from galw_core.weighting import LossWeighting
from galw_helpers import PLANTED, TOY_TASKS, toy_cfg, toy_training

GROUPED = ["MODEL.GALW.GROUPING", "explicit", "MODEL.GALW.GROUPS", PLANTED]


def test_two_phase_probe_epochs_one_fails_at_build_naming_key(tmp_path):
    with pytest.raises(ValueError, match="MODEL.GALW.PROBE_EPOCHS is 1"):
        toy_training(toy_cfg(tmp_path, "MODEL.GALW.MODE", "two_phase", "MODEL.GALW.PROBE_EPOCHS", 1))


def test_two_phase_training_under_two_epochs_fails_at_build_naming_max_iter(tmp_path):
    cfg = toy_cfg(tmp_path, "MODEL.GALW.MODE", "two_phase", "MODEL.GALW.PROBE_EPOCHS", 0, "SOLVER.MAX_ITER", 9)
    with pytest.raises(ValueError, match=r"SOLVER.MAX_ITER is 9: .*MODEL.GALW.PROBE_EPOCHS 0.*>= 2 epochs of 5"):
        toy_training(cfg)
    toy_training(toy_cfg(tmp_path, "MODEL.GALW.MODE", "two_phase", "MODEL.GALW.PROBE_EPOCHS", 0, "SOLVER.MAX_ITER", 10))


def test_single_run_max_iter_before_probing_done_fails_at_build_naming_key(tmp_path):
    # 4 probing epochs of 5 iterations: a 20-iteration training would never train grouped.
    with pytest.raises(ValueError, match=r"SOLVER.MAX_ITER is 20, .*MODEL.GALW.PROBE_EPOCHS \(4\) x 5"):
        toy_training(toy_cfg(tmp_path, "SOLVER.MAX_ITER", 20))
    toy_training(toy_cfg(tmp_path, "SOLVER.MAX_ITER", 21))


def test_negative_lambda_fails_at_build_naming_key():
    with pytest.raises(ValueError, match="MODEL.GALW.LAMBDA is -0.5"):
        LossWeighting(toy_cfg("", "MODEL.GALW.LAMBDA", -0.5))
    assert LossWeighting(toy_cfg("", "MODEL.GALW.LAMBDA", 0.0)).lam == 0.0


def test_groups_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ValueError, match=f"GROUPS_FILE '{missing}' does not exist"):
        LossWeighting(toy_cfg("", "MODEL.GALW.GROUPS_FILE", str(missing)))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=f"GROUPS_FILE '{broken}' cannot be read as JSON"):
        LossWeighting(toy_cfg("", "MODEL.GALW.GROUPS_FILE", str(broken)))
    other = tmp_path / "other_tasks.json"
    other.write_text(json.dumps({"groups": [["loss_t0", "loss_x"], TOY_TASKS[1:]]}))
    with pytest.raises(ValueError, match=f"GROUPS_FILE '{other}' does not fit MODEL.GALW.TASKS: .*'loss_x'"):
        toy_training(toy_cfg(tmp_path, "MODEL.GALW.GROUPS_FILE", str(other)))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_non_finite_weighted_total_raises_naming_task_and_group(tmp_path):
    # RULWF over the planted groups g0..g2, without the bound on 1/sigma^2 (which would project -50 away)
    step, _ = toy_training(toy_cfg(tmp_path, *GROUPED, "MODEL.GALW.MAX_GROUP_WEIGHT", 0.0))
    with torch.no_grad():
        step.weighting.log_sigma[0] = -50.0  # 1 / sigma^2 = e^100: inf in float32; raw losses stay finite
    before = _weights(step.model)
    with pytest.raises(FloatingPointError, match=r"iteration 0; .*task loss_t4 \(group g0\)"):
        step.train(0, 1)
    after = _weights(step.model)
    assert all(torch.equal(before[k], after[k]) for k in before if k != "iteration")  # raised before any update


def test_non_finite_sigma_raises_naming_group(tmp_path):
    step, _ = toy_training(toy_cfg(tmp_path, *GROUPED, "MODEL.GALW.WEIGHTING", "ulwf"))
    with torch.no_grad():
        step.weighting.log_sigma[1] = 100.0  # sigma = e^100 = inf; ULWF's total L/sigma^2 + 100 is finite
    with pytest.raises(FloatingPointError, match="group g1: sigma inf"):
        step.train(0, 1)


def test_huge_learning_rate_stops_before_a_non_finite_checkpoint(tmp_path):
    step, _ = toy_training(toy_cfg(tmp_path, *GROUPED, "SOLVER.BASE_LR", 1e4, "SOLVER.MOMENTUM", 0.9))
    checkpointer = AtomicCheckpointer(step.model, str(tmp_path), trainer=step)
    step.register_hooks([PeriodicCheckpointer(checkpointer, 1)])
    with pytest.raises(FloatingPointError):
        step.train(0, 50)
    assert 0 < step.iter < 49
    saved = [p for p in os.listdir(tmp_path) if p.startswith("model_") and p.endswith(".pth")]
    assert saved and not [p for p in os.listdir(tmp_path) if ".tmp." in p]
    for name in saved:
        state = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), name
    assert (tmp_path / "last_checkpoint").read_text() in saved


def test_checkpointer_refuses_non_finite_tensors_naming_them(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000")
    with torch.no_grad():
        model[1].bias.fill_(float("nan"))
        model[0].weight[0, 0] = float("inf")
    refused = r"model_0000001.pth: 2 tensor\(s\) hold NaN or inf: model.0.weight, model.1.bias"
    with pytest.raises(FloatingPointError, match=refused):
        checkpointer.save("model_0000001")
    assert not (tmp_path / "model_0000001.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


class _FakeTrainer:
    """Stands for the person-search Trainer in train_two_phase: phase one writes groups."""

    built = []

    def __init__(self, cfg):
        self.cfg, self.model, self.start_iter = cfg, torch.nn.Linear(1, 1), 0
        _FakeTrainer.built.append(os.path.basename(cfg.OUTPUT_DIR))

    def resume_or_load(self, resume):
        pass

    def train(self):
        if os.path.basename(self.cfg.OUTPUT_DIR) == PHASE_ONE_DIR:
            with open(os.path.join(self.cfg.OUTPUT_DIR, "galw_groups.json"), "w") as f:
                json.dump({"groups": PLANTED}, f)


def _two_phase(out, *opts, resume=False):
    _FakeTrainer.built = []
    train_two_phase(toy_cfg(out, "MODEL.GALW.MODE", "two_phase", "MODEL.GALW.PROBE_EPOCHS", 0, *opts),
                    _FakeTrainer, resume=resume)
    return _FakeTrainer.built


def test_stale_phase_one_with_other_settings_fails_naming_file_and_keys(tmp_path):
    out = tmp_path / "run"
    assert _two_phase(out) == [PHASE_ONE_DIR, "run"]
    record = json.loads((out / PHASE_ONE_DIR / PHASE_ONE_RECORD).read_text())["settings"]
    assert record["MODEL.GALW.NUM_GROUPS"] == 3 and "OUTPUT_DIR" not in record
    with pytest.raises(ValueError, match=(
        rf"{out / PHASE_ONE_DIR / 'galw_groups.json'} was made by a phase one with other settings "
        rf"\(recorded in {out / PHASE_ONE_DIR / PHASE_ONE_RECORD}\): MODEL.GALW.NUM_GROUPS: recorded 3, now 2; "
        r"SOLVER.BASE_LR: recorded 0.0001, now 0.001")):
        _two_phase(out, "MODEL.GALW.NUM_GROUPS", 2, "SOLVER.BASE_LR", 1e-3)
    assert _FakeTrainer.built == []  # failed before building anything


def test_matching_phase_one_is_reused_without_resume(tmp_path):
    out = tmp_path / "run"
    _two_phase(out)
    # Phase two's weighting, evaluation and checkpoint period do not change phase one's results.
    assert _two_phase(out, "MODEL.GALW.WEIGHTING", "ulwf", "TEST.EVAL_PERIOD", 7, "SOLVER.CHECKPOINT_PERIOD", 3) == ["run"]


def test_stale_phase_one_is_reused_with_resume(tmp_path):
    out = tmp_path / "run"
    _two_phase(out)
    assert _two_phase(out, "MODEL.GALW.NUM_GROUPS", 2, resume=True) == ["run"]


def test_phase_one_reused_across_max_group_weight_unless_it_weighted_with_sigmas(tmp_path):
    """MAX_GROUP_WEIGHT changes phase one's results only when phase one learns sigmas (ULWF/RULWF)."""
    out = tmp_path / "run"
    _two_phase(out)  # PROBE_WEIGHTING equal
    path = out / PHASE_ONE_DIR / PHASE_ONE_RECORD
    assert "MODEL.GALW.MAX_GROUP_WEIGHT" not in json.loads(path.read_text())["settings"]
    assert _two_phase(out, "MODEL.GALW.MAX_GROUP_WEIGHT", 20.0) == ["run"]
    sigmas = tmp_path / "sigmas"
    _two_phase(sigmas, "MODEL.GALW.PROBE_WEIGHTING", "rulwf")
    with pytest.raises(ValueError, match=r"MODEL.GALW.MAX_GROUP_WEIGHT: recorded 10.0, now 20.0"):
        _two_phase(sigmas, "MODEL.GALW.PROBE_WEIGHTING", "rulwf", "MODEL.GALW.MAX_GROUP_WEIGHT", 20.0)
