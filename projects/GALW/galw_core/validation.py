"""``check_galw_config``: MODEL.GALW settings that would fail late (after a training) or never,
refused when the weighting or the GALW hook is built, naming the key."""
import math
import os
from typing import Optional

from . import grouping as G

__all__ = ["check_galw_config"]


def check_galw_config(cfg, epoch_iters: Optional[int] = None):
    """Raise ValueError naming the key for settings GALW cannot train with.

    Args:
        epoch_iters: iterations per Gamma epoch; with it, the probing schedule is checked too
            (the GALW hook passes it; the weighting alone does not know the data).
    """
    g = cfg.MODEL.GALW
    lam = float(g.LAMBDA)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(
            f"MODEL.GALW.LAMBDA is {g.LAMBDA}: expected a finite value >= 0 (RULWF's lambda * |sigma - 1| "
            "is a penalty; a negative lambda leaves the objective without a lower bound)"
        )
    bound = float(g.MAX_GROUP_WEIGHT)
    if not math.isfinite(bound) or not (bound == 0 or bound >= 1):
        raise ValueError(
            f"MODEL.GALW.MAX_GROUP_WEIGHT is {g.MAX_GROUP_WEIGHT}: expected 0 (no bound) or a finite value "
            ">= 1 (a bound on each group's 1/sigma^2; below 1 it would hold sigma above its start, 1)"
        )
    if g.GROUPS_FILE:
        _check_groups_file(g.GROUPS_FILE, list(g.TASKS))
        return
    if epoch_iters is None or g.GROUPING != "galw":
        return
    if g.PROBE_EPOCHS < 0:
        raise ValueError(f"MODEL.GALW.PROBE_EPOCHS is {g.PROBE_EPOCHS}: expected 0 (the whole training) or >= 2")
    if g.PROBE_EPOCHS == 1:
        raise ValueError(
            "MODEL.GALW.PROBE_EPOCHS is 1: Eq. 7 takes differences between epochs of Gamma, so "
            "probing needs >= 2 epochs (or 0: the whole first training)"
        )
    max_iter = int(cfg.SOLVER.MAX_ITER)
    if g.MODE == "single_run":
        probing = g.PROBE_EPOCHS * epoch_iters
        if max_iter <= probing:
            raise ValueError(
                f"SOLVER.MAX_ITER is {max_iter}, but single_run probes MODEL.GALW.PROBE_EPOCHS "
                f"({g.PROBE_EPOCHS}) x {epoch_iters} iterations (MODEL.GALW.EPOCH_ITERS) = {probing} "
                "first: the training would end before the grouped weighting starts"
            )
    elif g.PROBE_EPOCHS == 0 and max_iter < 2 * epoch_iters:
        raise ValueError(
            f"SOLVER.MAX_ITER is {max_iter}: with MODEL.GALW.PROBE_EPOCHS 0 phase one records Gamma over "
            f"the whole training, which must last >= 2 epochs of {epoch_iters} iterations "
            f"(MODEL.GALW.EPOCH_ITERS) for Eq. 7"
        )


def _check_groups_file(path: str, tasks):
    from .weighting import validate_groups  # weighting calls this module on build

    if not os.path.isfile(path):
        raise ValueError(f"MODEL.GALW.GROUPS_FILE '{path}' does not exist")
    groups = G.load_groups_file(path)  # names the file on unreadable JSON or a bad layout
    try:
        validate_groups(groups, tasks)
    except ValueError as e:
        raise ValueError(f"MODEL.GALW.GROUPS_FILE '{path}' does not fit MODEL.GALW.TASKS: {e}") from None
