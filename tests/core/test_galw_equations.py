"""GALW's equations on hand-computed values: Eq. 5/9 weighting, d/dsigma, Eq. 6 probe, Eqs. 7-8, clustering."""
import math

import pytest
import torch

from galw_core import grouping as G
from galw_core.probe import GradientProbe, select_shared_parameters
from galw_core.weighting import LossWeighting

TASKS = ["a", "b", "c"]
KINDS = ["classification", "regression", "classification"]
LOSSES = {"a": torch.tensor(3.0), "b": torch.tensor(4.0), "c": torch.tensor(1.0)}


LOG_SIGMA = (math.log(2.0), 0.0, math.log(0.5))


def _weighting(method, log_sigma=LOG_SIGMA, **kw):
    w = LossWeighting(tasks=TASKS, task_kinds=KINDS, method=method, **kw)
    with torch.no_grad():
        w.log_sigma.copy_(torch.tensor(log_sigma))
    return w


def test_rulwf_per_task_eq5():
    # a: 3/(1*4) + ln2 + |2-1|; b: 4/(2*1) + 0 + 0; c: 1/(1*0.25) + ln0.5 + |0.5-1|  -> 8.25
    assert _weighting("rulwf")(LOSSES).item() == pytest.approx(8.25, abs=1e-5)
    assert _weighting("rulwf", lam=0.5)(LOSSES).item() == pytest.approx(8.25 - 0.75, abs=1e-5)


def test_ulwf_equal_manual():
    assert _weighting("ulwf")(LOSSES).item() == pytest.approx(6.75, abs=1e-5)
    assert _weighting("equal")(LOSSES).item() == pytest.approx(8.0)
    w = _weighting("manual", manual_weights=[2.0, 0.5, 1.0])
    assert w(LOSSES).item() == pytest.approx(9.0)
    assert w.task_weights() == {"a": 2.0, "b": 0.5, "c": 1.0}


def test_grouped_rulwf_eq9_and_effective_weights():
    w = _weighting("rulwf", group_log_sigma="per_group")
    w.configure("rulwf", [["a", "b"], ["c"]])
    # slot 0 = ln 2 for {a, b}: (3/1 + 4/2)/4 + ln2 + 1; slot 1 = 0 for {c}: 1
    assert w(LOSSES).item() == pytest.approx(1.25 + math.log(2) + 1 + 1, abs=1e-5)
    assert w.group_names == ["g0", "g1"]
    assert w.task_slot.tolist() == [0, 0, 1]
    assert w.sigmas() == pytest.approx({"g0": 2.0, "g1": 1.0})
    assert w.task_weights() == pytest.approx({"a": 0.25, "b": 0.125, "c": 1.0})
    # one group per task in task order is per-task weighting, named after the tasks
    w.configure("rulwf", [["a"], ["b"], ["c"]])
    assert w.group_names == TASKS and w.task_slot.tolist() == [0, 1, 2]
    w.configure("rulwf", [["b"], ["a"], ["c"]])
    assert w.group_names == ["g0", "g1", "g2"]


def test_rulwf_dsigma_matches_analytic():
    torch.manual_seed(0)
    for lam in (0.0, 1.0, 2.5):
        log_sigma = torch.randn(3) * 0.7
        # the equations themselves: no bound (randn * 0.7 reaches below -ln(10)/2, the default's floor)
        w = _weighting("rulwf", log_sigma=log_sigma.tolist(), lam=lam, max_group_weight=0.0)
        w(LOSSES).backward()
        sigma = torch.exp(log_sigma)
        raw = torch.tensor([3.0, 4.0, 1.0])
        k = torch.tensor([1.0, 2.0, 1.0])
        analytic = -2 * raw / (k * sigma**3) + 1 / sigma + lam * torch.sign(sigma - 1)
        # autograd gives dL/dlog_sigma = sigma * dL/dsigma
        assert torch.allclose(w.log_sigma.grad / sigma, analytic, atol=1e-5)


def test_weighting_errors_name_the_task():
    w = _weighting("rulwf")
    with pytest.raises(KeyError, match="'c'"):
        w({"a": LOSSES["a"], "b": LOSSES["b"]})
    with pytest.raises(KeyError, match="'d'"):
        w({**LOSSES, "d": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="task 'a' is in group 0 and in group 1"):
        w.configure("rulwf", [["a", "b"], ["a", "c"]])
    with pytest.raises(ValueError, match=r"\['c'\] are in no group"):
        w.configure("rulwf", [["a", "b"]])
    with pytest.raises(ValueError, match="task 'b' has kind 'detection'"):
        LossWeighting(tasks=TASKS, task_kinds=["classification", "detection", "regression"])
    with pytest.raises(ValueError, match="MANUAL_WEIGHTS"):
        LossWeighting(tasks=TASKS, task_kinds=KINDS, method="manual")


def test_sigma_stays_positive_under_large_steps():
    w = _weighting("rulwf", log_sigma=(0.0, 0.0, 0.0))
    opt = torch.optim.SGD(w.parameters(), lr=2.0)  # sigma -= 2 * 0.98 would be < 0
    for _ in range(2):
        opt.zero_grad()
        w({t: torch.tensor(0.01) for t in TASKS}).backward()
        opt.step()
    assert all(0 < s < 1 for s in w.sigmas().values())


class _TwoTask(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.shared_w1 = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.shared_w2 = torch.nn.Parameter(torch.tensor(1.0))
        self.head = torch.nn.Parameter(torch.tensor(5.0))

    def forward(self):
        x = torch.tensor([3.0, 4.0])
        return {"a": (self.shared_w1 * x).sum() * 1.0, "b": 3 * self.shared_w2**2 * self.head / 5}


@pytest.mark.parametrize("batched", [False, True])
def test_probe_eq6(batched):
    m = _TwoTask()
    shared = select_shared_parameters(m, ["shared_"])
    assert [n for n, _ in shared] == ["shared_w1", "shared_w2"]
    losses = m()
    gam = GradientProbe(shared, batched=batched).measure(losses, ["a", "b"])
    # a: ||(3,4)|| = 5 on w1, nothing on w2 -> (5 + 0)/2; b: d(3 w2^2)/dw2 = 6 -> (0 + 6)/2
    assert gam == pytest.approx({"a": 2.5, "b": 3.0})
    assert all(p.grad is None for p in m.parameters())  # nothing reaches .grad
    sum(losses.values()).backward()  # the graph is still there for the real backward
    assert m.shared_w2.grad.item() == pytest.approx(6.0)


def test_probe_prefix_errors():
    with pytest.raises(ValueError, match="match no trainable parameter"):
        select_shared_parameters(_TwoTask(), ["backbone.res2"])


def test_eq7_eq8():
    assert G.average_slope([1.0, 3.0, 4.0, 10.0]) == pytest.approx(3.0)
    assert G.squash_slope(3.0) == pytest.approx(0.75)  # sigmoid(ln 3) = 3/4
    assert G.squash_slope(-0.5) == pytest.approx(-1 / 3)
    assert G.squash_slope(0.0) == 0.0
    with pytest.raises(ValueError, match="at least 2 epochs"):
        G.average_slope([1.0])


HISTORY = {"a": [0.0, 1.0], "b": [0.0, 0.9], "c": [1.0, 0.0], "d": [0.0, 0.0]}  # s* 0.5, .474, -.5, 0


def test_group_tasks_canonical_and_linkage():
    assert G.group_tasks(HISTORY, 3) == [["c"], ["d"], ["a", "b"]]
    # ward merges c with d next (cost 0.125 < 0.158); single merges d with b (gap .474 < .5)
    assert G.group_tasks(HISTORY, 2, linkage="ward") == [["c", "d"], ["a", "b"]]
    assert G.group_tasks(HISTORY, 2, linkage="single") == [["c"], ["a", "b", "d"]]
    reordered = {k: HISTORY[k] for k in ["d", "b", "c", "a"]}
    assert G.group_tasks(reordered, 2) == G.group_tasks(HISTORY, 2)
    assert G.group_tasks(HISTORY, 4) == [["c"], ["d"], ["b"], ["a"]]
    assert G.group_tasks(HISTORY, 1) == [["a", "b", "c", "d"]]
    with pytest.raises(ValueError, match="NUM_GROUPS is 5"):
        G.group_tasks(HISTORY, 5)


def test_fixed_groupings():
    tasks = ["loss_rpn_cls", "loss_nae_box", "loss_aps_cls", "loss_aps_box", "loss_attr"]
    branches = [["loss_rpn_", "loss_nae_"], ["loss_aps_"], ["loss_attr"]]
    assert G.groups_by_prefix(tasks, branches) == [
        ["loss_nae_box", "loss_rpn_cls"], ["loss_aps_box", "loss_aps_cls"], ["loss_attr"]
    ]
    with pytest.raises(ValueError, match="task 'loss_attr' matches 0 branches"):
        G.groups_by_prefix(tasks, branches[:2])
    r = G.random_groups(tasks, 3, seed=7)
    assert r == G.random_groups(list(reversed(tasks)), 3, seed=7)
    assert len(r) == 3 and all(r) and sorted(t for g in r for t in g) == sorted(tasks)
    assert any(G.random_groups(tasks, 3, seed=s) != r for s in range(8, 12))
    assert G.per_task_groups(tasks) == [[t] for t in tasks]
    assert G.single_group(tasks) == [sorted(tasks)]


def test_optimizer_has_no_weight_decay_on_sigma():
    from galw_core.solver import build_optimizer
    from galw_helpers import toy_cfg, toy_training

    cfg = toy_cfg()
    step, _ = toy_training(cfg)
    groups = [g for g in step.optimizer.param_groups if any(p is step.weighting.log_sigma for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and len(groups[0]["params"]) == 1
    assert any(g["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY for g in build_optimizer(cfg, step.model).param_groups)


def test_logged_weights_per_task_and_per_group_do_not_collide():
    """Per-task weighting names each group after its task: galw/weight/<task> must still be the
    weight the task's loss gets, 1/(k sigma^2), and 1/sigma^2 goes to galw/group_weight/<group>."""
    from detectron2.utils.events import EventStorage

    from galw_core.train_step import write_galw_metrics

    w = _weighting("rulwf")  # sigma: a 2 (k=1), b 1 (k=2), c 0.5 (k=1)
    with EventStorage(0) as storage:
        write_galw_metrics(w, LOSSES)
        got = {k: v[0] for k, v in storage.latest().items()}
    assert got["galw/weight/a"] == pytest.approx(0.25) and got["galw/group_weight/a"] == pytest.approx(0.25)
    assert got["galw/weight/b"] == pytest.approx(0.5) and got["galw/group_weight/b"] == pytest.approx(1.0)
    assert got["galw/weight/c"] == pytest.approx(4.0) and got["galw/sigma/c"] == pytest.approx(0.5)
    assert got["galw/raw/b"] == pytest.approx(4.0)
