"""A group whose weight 1/sigma^2 collapses (sigma grows while its loss stays large, as a re-id
loss near chance does under uncertainty weighting) is named in the log and counted in EventStorage:
the mirror of MODEL.GALW.MAX_GROUP_WEIGHT's upper bound, at 1/MAX_GROUP_WEIGHT. Nothing is clamped:
sigma stays the objective's, the run only says so."""
import logging
import math

import pytest
import torch
from detectron2.utils.events import EventStorage

from galw_core.train_step import write_galw_metrics
from galw_core.weighting import LossWeighting

from test_weight_bound import VANISHING, _cfg


def _set(w, log_sigma):
    with torch.no_grad():
        w.log_sigma.copy_(torch.tensor(log_sigma))


def test_collapsed_groups_are_named_once_and_counted(caplog):
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=25.0))  # collapse below 1/25: log sigma > log(5)
    high = 0.5 * math.log(25.0) + 0.01
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING, logger="galw_core.train_step"):
        for at in ([0.0, 0.0], [0.0, high], [0.0, high], [0.0, 0.0], [high, high]):
            _set(w, at)
            write_galw_metrics(w, VANISHING)
            storage.step()
    msgs = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(msgs) == 2 and "['oim']" in msgs[0] and "['det']" in msgs[1]
    assert "1/MAX_GROUP_WEIGHT = 0.04" in msgs[0]
    assert storage.history("galw/groups_collapsed").values() == [(0, 0), (1, 1), (1, 2), (0, 3), (2, 4)]
    assert w.groups_collapsed() == ["det", "oim"]
    assert w.group_weights() == pytest.approx({"det": math.exp(-2 * high), "oim": math.exp(-2 * high)})


def test_collapse_is_not_clamped():
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=25.0))
    _set(w, [3.0, 0.0])
    assert w.sigmas()["det"] == pytest.approx(math.exp(3.0))
    assert w.task_weights()["det"] == pytest.approx(math.exp(-6.0))


def test_no_bound_no_collapse_count():
    w = LossWeighting(_cfg(MAX_GROUP_WEIGHT=0.0))
    _set(w, [5.0, 5.0])
    with EventStorage(0) as storage:
        write_galw_metrics(w, VANISHING)
        assert "galw/groups_collapsed" not in storage.latest()
    assert w.groups_collapsed() == []
