"""Fidelity of the GALW core: Eq. 9's two readings at equilibrium, Gamma on weighted vs raw losses,
and global-norm ("full_model") gradient clipping, all on hand-computed values."""
import math

import pytest
import torch

from galw_core.probe import GradientProbe
from galw_core.solver import build_optimizer
from galw_core.train_step import gamma_losses
from galw_core.weighting import LossWeighting

from galw_helpers import toy_cfg

TASKS = ["t0", "t1", "t2", "t3", "t4"]
GROUPS = [["t0"], ["t1", "t2", "t3", "t4"]]


#: Hand-computed sigma of the group {t1..t4} at rest (raw losses 1, classification, lambda 1):
#: per_group  4/s^2 + log s + |s - 1|    -> s^3 + s^2 - 8 = 0,    s = 1.716189, 1/s^2 = 0.339524
#: per_task   4/s^2 + 4 log s + |s - 1|  -> s^3 + 4 s^2 - 8 = 0,  s = sqrt(5) - 1, 1/s^2 = (3 + sqrt 5)/8
SIGMA_AT_REST = {"per_group": 1.716189, "per_task": math.sqrt(5) - 1}
WEIGHT_AT_REST = {"per_group": 0.339524, "per_task": (3 + math.sqrt(5)) / 8}


def _grad_at(group_log_sigma, sigma0, sigma1):
    """d objective / d log sigma of both groups, and the task weights, at (sigma0, sigma1)."""
    w = LossWeighting(
        tasks=TASKS, task_kinds=["classification"] * 5, method="rulwf", group_log_sigma=group_log_sigma
    )
    w.configure("rulwf", GROUPS)
    with torch.no_grad():
        w.log_sigma[:2] = torch.tensor([math.log(sigma0), math.log(sigma1)])
    w({t: torch.tensor(1.0) for t in TASKS}).backward()
    return w.log_sigma.grad[:2].tolist(), w.task_weights()


@pytest.mark.parametrize("reading", ["per_group", "per_task"])
def test_eq9_equilibrium_at_rest(reading):
    other = "per_task" if reading == "per_group" else "per_group"
    (_, g1), weights = _grad_at(reading, 1.0, SIGMA_AT_REST[reading])
    assert g1 == pytest.approx(0.0, abs=1e-4)  # stationary at the hand-computed sigma ...
    (_, g1_other), _ = _grad_at(reading, 1.0, SIGMA_AT_REST[other])
    assert abs(g1_other) > 0.5  # ... and not at the other reading's
    assert weights["t0"] == pytest.approx(1.0)
    for t in TASKS[1:]:
        assert weights[t] == pytest.approx(WEIGHT_AT_REST[reading], abs=1e-5)
    # {t0} (1/s^2 + log s + |s - 1|) rests on the kink s = 1: falling left of it, rising right of it
    (left, _), _ = _grad_at(reading, 0.999, SIGMA_AT_REST[reading])
    (right, _), _ = _grad_at(reading, 1.001, SIGMA_AT_REST[reading])
    assert left < 0 < right


def test_eq9_readings_objective_values():
    w = LossWeighting(tasks=["a", "b", "c"], task_kinds=["classification", "regression", "classification"],
                      method="rulwf")
    w.configure("rulwf", [["a", "b"], ["c"]])
    with torch.no_grad():
        w.log_sigma[0] = math.log(2.0)
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(4.0), "c": torch.tensor(1.0)}
    # (3 + 4/2)/4 + 2 ln 2 + |2 - 1| for {a, b}; 1 for {c}
    assert w(losses).item() == pytest.approx(1.25 + 2 * math.log(2) + 1 + 1, abs=1e-5)
    w.group_log_sigma = "per_group"
    assert w(losses).item() == pytest.approx(1.25 + math.log(2) + 1 + 1, abs=1e-5)
    with pytest.raises(ValueError, match="GROUP_LOG_SIGMA"):
        LossWeighting(tasks=["a"], task_kinds=["classification"], group_log_sigma="per_loss")


def test_group_log_sigma_read_from_config():
    cfg = toy_cfg()
    assert cfg.MODEL.GALW.GROUP_LOG_SIGMA == "per_task"
    cfg.MODEL.GALW.GROUP_LOG_SIGMA = "per_group"
    assert LossWeighting(cfg).group_log_sigma == "per_group"


def _probe_setup():
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = {"a": (shared * shared).sum(), "b": shared.sum() * 3.0}  # grads (2, 4) and (3, 3)
    weighting = LossWeighting(tasks=["a", "b"], task_kinds=["classification", "regression"], method="manual",
                              manual_weights=[10.0, 1.0])
    return GradientProbe([("shared", shared)]), weighting, losses


def test_gamma_on_weighted_losses():
    probe, weighting, losses = _probe_setup()
    gammas = probe.measure(gamma_losses(weighting, losses, "weighted"), weighting.tasks)
    assert gammas["a"] == pytest.approx(10 * math.sqrt(20), rel=1e-6)
    assert gammas["b"] == pytest.approx(math.sqrt(18), rel=1e-6)


def test_gamma_on_raw_losses():
    probe, weighting, losses = _probe_setup()
    gammas = probe.measure(gamma_losses(weighting, losses, "raw"), weighting.tasks)
    assert gammas["a"] == pytest.approx(math.sqrt(20), rel=1e-6)
    assert gammas["b"] == pytest.approx(math.sqrt(18), rel=1e-6)
    with pytest.raises(ValueError, match="GAMMA_LOSS"):
        gamma_losses(weighting, losses, "scaled")


class _TwoParams(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(2))
        self.q = torch.nn.Parameter(torch.zeros(2))


def _one_clipped_step(clip_type):
    cfg = toy_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    model = _TwoParams()
    opt = build_optimizer(cfg, model)
    model.p.grad = torch.tensor([3.0, 0.0])
    model.q.grad = torch.tensor([0.0, 4.0])
    opt.step()
    return model.p.detach().tolist(), model.q.detach().tolist()


def test_full_model_clipping_scales_the_global_norm():
    # global norm 5 -> every gradient times 1/5: steps (0.6, 0) and (0, 0.8)
    p, q = _one_clipped_step("full_model")
    assert p == pytest.approx([-0.6, 0.0]) and q == pytest.approx([0.0, -0.8])


def test_detectron2_norm_clipping_is_per_tensor():
    # each tensor clipped on its own to norm 1: steps (1, 0) and (0, 1)
    p, q = _one_clipped_step("norm")
    assert p == pytest.approx([-1.0, 0.0]) and q == pytest.approx([0.0, -1.0])


def test_fixed_grouping_never_probes_so_any_probe_period_is_accepted():
    """The manual baseline (fixed per-task groups) runs on datasets whose epoch is shorter than
    PROBE_PERIOD; only a probing run needs a Gamma measurement in every epoch."""
    from galw_helpers import toy_training

    manual = ["MODEL.GALW.WEIGHTING", "manual", "MODEL.GALW.GROUPING", "per_task",
              "MODEL.GALW.MANUAL_WEIGHTS", [1.0, 1.0, 10.0, 1.0, 10.0, 1.0], "MODEL.GALW.PROBE_PERIOD", 100]
    _, hook = toy_training(toy_cfg("", *manual))  # epoch 5 iterations < period 100
    assert hook.phase == "grouped"
    with pytest.raises(ValueError, match="PROBE_PERIOD is 100"):
        toy_training(toy_cfg("", "MODEL.GALW.PROBE_PERIOD", 100))
