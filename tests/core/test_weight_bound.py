"""A group's weight 1/sigma^2 stays bounded when its loss goes to 0 (the runaway of Eq. 9).

For sigma < 1 RULWF's regulariser lambda*|sigma - 1| is at most lambda, so the optimum of
L/sigma^2 + n log sigma + lambda|sigma - 1| has 1/sigma^2 ~ n/(2L): unbounded as L -> 0.
Measured on the demo (seed 1, 3000 iterations): {loss_nae_det} reached 4.4e7 and the embeddings
collapsed (docs/demo.md). MODEL.GALW.MAX_GROUP_WEIGHT bounds it.
"""
import logging
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from galw_core.config import add_galw_core_config
from galw_core.train_step import write_galw_metrics
from galw_core.validation import check_galw_config
from galw_core.weighting import LossWeighting


def _cfg(**galw):
    cfg = get_cfg()
    add_galw_core_config(cfg)
    cfg.MODEL.GALW.TASKS = ["det", "oim"]
    cfg.MODEL.GALW.TASK_KINDS = ["classification", "classification"]
    for k, v in galw.items():
        setattr(cfg.MODEL.GALW, k, v)
    return cfg


def _train_sigma(weighting, losses, steps=400, lr=0.1):
    """SGD on log sigma alone, the raw losses held fixed (as they are within one iteration)."""
    opt = torch.optim.SGD([weighting.log_sigma], lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        weighting(losses).backward()
        opt.step()
    return weighting


def _weight_on_raw_loss(weighting, losses, task):
    """d total / d L_task: the weight the model's gradient actually gets."""
    raw = {t: v.clone().requires_grad_(True) for t, v in losses.items()}
    weighting(raw).backward()
    return raw[task].grad.item()


VANISHING = {"det": torch.tensor(1e-8), "oim": torch.tensor(3.5)}


@pytest.mark.parametrize("method", ["rulwf", "ulwf"])
def test_default_config_bounds_the_weight_of_a_vanishing_loss(method):
    cfg = _cfg(WEIGHTING=method)
    w = _train_sigma(LossWeighting(cfg), VANISHING)
    weight = w.task_weights()["det"]
    # the default bound: 1/sigma^2 <= 10 (sigma >= 0.316); unbounded it is about 1/(2L) = 5e7
    assert 1.0 < weight <= 10.0 * (1 + 1e-5)
    assert _weight_on_raw_loss(w, VANISHING, "det") == pytest.approx(weight, rel=1e-5)
    # the other task, far from the bound, still finds its own optimum 1/sigma^2 = 1/(2L) (ULWF)
    if method == "ulwf":
        assert w.task_weights()["oim"] == pytest.approx(1 / 7.0, rel=1e-3)


def test_without_bound_the_weight_runs_away_as_n_over_2L():
    w = _train_sigma(LossWeighting(_cfg(MAX_GROUP_WEIGHT=0.0)), VANISHING, steps=600)
    # optimum of L e^{-2s} + s + |e^s - 1| for s < 0: 2L e^{-2s} = 1 - e^s, about 1/(2L) = 5e7
    assert w.task_weights()["det"] == pytest.approx(1 / (2 * 1e-8), rel=0.05)


@pytest.mark.parametrize("bound", [4.0, 25.0])
def test_bound_is_on_the_group_weight_and_k(bound):
    cfg = _cfg(MAX_GROUP_WEIGHT=bound, TASK_KINDS=["regression", "classification"])
    w = _train_sigma(LossWeighting(cfg), VANISHING)
    assert w.sigmas()["det"] == pytest.approx(1 / math.sqrt(bound), rel=1e-5)
    # 1/(k sigma^2) with k = 2 for a regression task
    assert w.task_weights()["det"] == pytest.approx(bound / 2, rel=1e-5)
    assert _weight_on_raw_loss(w, VANISHING, "det") == pytest.approx(bound / 2, rel=1e-5)


def test_bound_that_does_not_bind_changes_nothing():
    losses = {"det": torch.tensor(0.8), "oim": torch.tensor(3.5)}
    runs = []
    for bound in (0.0, 100.0):
        w = _train_sigma(LossWeighting(_cfg(MAX_GROUP_WEIGHT=bound)), losses, steps=50)
        raw = {t: v.clone().requires_grad_(True) for t, v in losses.items()}
        total = w(raw)
        total.backward()
        runs.append((w.log_sigma.detach().clone(), total.detach(), raw["det"].grad, w.log_sigma.grad.clone()))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_sigma_leaves_the_bound_when_the_loss_grows_again():
    w = _train_sigma(LossWeighting(_cfg(MAX_GROUP_WEIGHT=25.0)), VANISHING)
    assert w.task_weights()["det"] == pytest.approx(25.0, rel=1e-5)
    # RULWF's optimum for L = 0.5 (one task, lambda 1) is sigma = 1: the projection must not hold sigma down
    _train_sigma(w, {"det": torch.tensor(0.5), "oim": torch.tensor(3.5)}, steps=1000, lr=0.01)
    assert w.sigmas()["det"] == pytest.approx(1.0, abs=0.02)


def test_grouped_weighting_bounds_the_shared_slot():
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=9.0))
    w.configure("rulwf", [["det", "oim"]])
    _train_sigma(w, {"det": torch.tensor(1e-8), "oim": torch.tensor(1e-8)})
    assert w.sigmas() == pytest.approx({"g0": 1 / 3.0}, rel=1e-5)
    assert w.task_weights() == pytest.approx({"det": 9.0, "oim": 9.0}, rel=1e-5)


@pytest.mark.parametrize("bad", [-1.0, 0.5, float("nan"), float("inf")])
def test_bad_bound_is_an_error_naming_the_key(bad):
    with pytest.raises(ValueError, match=r"MODEL\.GALW\.MAX_GROUP_WEIGHT"):
        check_galw_config(_cfg(MAX_GROUP_WEIGHT=bad))


def test_groups_at_the_bound_are_logged_and_counted(caplog):
    """A bound that binds changes the equations: the log says which group, EventStorage counts them."""
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=25.0))
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING, logger="galw_core.train_step"):
        counts = []
        for losses, steps in ((VANISHING, 0), (VANISHING, 400), (VANISHING, 1),
                              ({"det": torch.tensor(0.5), "oim": torch.tensor(3.5)}, 1000)):
            _train_sigma(w, losses, steps=steps, lr=0.01 if steps == 1000 else 0.1)
            write_galw_metrics(w, losses)
            counts.append(storage.latest()["galw/groups_at_bound"][0])
            storage.step()
    assert counts == [0, 1, 1, 0]
    bound_msgs = [r.getMessage() for r in caplog.records if "MAX_GROUP_WEIGHT" in r.getMessage()]
    assert len(bound_msgs) == 1  # reaching it, not every step at it
    assert "['det']" in bound_msgs[0] and "= 25" in bound_msgs[0]
    assert w.groups_at_bound() == []


def test_no_bound_no_count():
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=0.0))
    with EventStorage(0) as storage:
        write_galw_metrics(w, VANISHING)
        assert "galw/groups_at_bound" not in storage.latest()
    assert w.groups_at_bound() == []


def test_each_group_is_named_once_when_it_first_reaches_the_bound(caplog):
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=25.0))
    floor = -0.5 * math.log(25.0)
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING, logger="galw_core.train_step"):
        for at in ([floor, 0.0], [floor, 0.0], [0.0, 0.0], [0.0, floor], [floor, floor]):
            with torch.no_grad():
                w.log_sigma.copy_(torch.tensor(at))
            write_galw_metrics(w, VANISHING)
            storage.step()
    msgs = [r.getMessage() for r in caplog.records if "MAX_GROUP_WEIGHT" in r.getMessage()]
    # once per group: det on reaching it, oim on reaching it; det coming back is not repeated
    assert len(msgs) == 2 and "['det']" in msgs[0] and "['oim']" in msgs[1]
    assert storage.history("galw/groups_at_bound").values()[-5:] == [(1, 0), (1, 1), (0, 2), (1, 3), (2, 4)]
