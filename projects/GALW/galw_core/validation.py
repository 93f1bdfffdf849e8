"""Every rule on MODEL.GALW, in one place, each error naming the key and what was expected.

:func:`check_galw_config` applies them all to a config at build time (the weighting and the GALW
hook call it from their ``from_config``); the rule functions below are also what the core's
constructors call on explicit arguments, so a rule is written once whichever way a part is built.
This module imports only the config schema and the groups-file reader: nothing in the core imports
back into it, so there is no import circle.
"""
import json
import math
import os
from typing import List, Optional, Sequence

from .config import GAMMA_LOSSES, GROUP_LOG_SIGMA, GROUPINGS, LINKAGES, MODES, TASK_KIND_K, WEIGHTING_METHODS

__all__ = [
    "check_choice",
    "check_epoch_iters",
    "check_galw_config",
    "check_manual_weights",
    "check_num_groups",
    "check_probe_schedule",
    "check_shared_prefixes",
    "check_tasks",
    "load_groups_file",
    "validate_groups",
]


def check_choice(key: str, value, allowed: Sequence):
    """``value`` of MODEL.GALW.<key> is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"MODEL.GALW.{key} is '{value}', expected one of {tuple(allowed)}")


def check_tasks(tasks: Sequence[str], task_kinds: Sequence[str]):
    """TASKS non-empty and without repeats; one known TASK_KINDS entry per task."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("MODEL.GALW.TASKS is empty: list the loss-dict keys to weight")
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ValueError(f"MODEL.GALW.TASKS lists task(s) {dup} more than once")
    if len(task_kinds) != len(tasks):
        raise ValueError(
            f"MODEL.GALW.TASK_KINDS has {len(task_kinds)} entries but MODEL.GALW.TASKS has "
            f"{len(tasks)}: give 'classification' or 'regression' for each task"
        )
    for task, kind in zip(tasks, task_kinds):
        if kind not in TASK_KIND_K:
            raise ValueError(
                f"MODEL.GALW.TASK_KINDS: task '{task}' has kind '{kind}', expected one of {sorted(TASK_KIND_K)}"
            )


def check_manual_weights(weights: Optional[Sequence[float]], tasks: Sequence[str], method: str):
    """MANUAL_WEIGHTS: one finite weight >= 0 per task when given; required by WEIGHTING 'manual'."""
    weights = list(weights or [])
    if method == "manual" and not weights:
        raise ValueError("MODEL.GALW.WEIGHTING is 'manual' but MODEL.GALW.MANUAL_WEIGHTS is empty")
    if not weights:
        return
    if len(weights) != len(tasks):
        raise ValueError(
            f"MODEL.GALW.MANUAL_WEIGHTS has {len(weights)} entries, expected one per task ({len(tasks)})"
        )
    bad = [w for w in weights if not (math.isfinite(float(w)) and float(w) >= 0)]
    if bad:
        raise ValueError(f"MODEL.GALW.MANUAL_WEIGHTS holds {bad}: expected finite weights >= 0")


def check_num_groups(num_groups: int, num_tasks: int):
    """NUM_GROUPS (G) in 1..number of tasks."""
    if not 1 <= num_groups <= num_tasks:
        raise ValueError(f"MODEL.GALW.NUM_GROUPS is {num_groups}, expected 1..{num_tasks} (the number of tasks)")


def check_shared_prefixes(prefixes: Sequence[str]):
    """SHARED_PARAM_PREFIXES non-empty (which parameters they match is checked on the model)."""
    if not prefixes:
        raise ValueError("MODEL.GALW.SHARED_PARAM_PREFIXES is empty: name the shared layers' prefixes")


def check_epoch_iters(epoch_iters: int):
    """The iterations of one Gamma epoch (MODEL.GALW.EPOCH_ITERS, or derived from the data) are >= 1."""
    if epoch_iters < 1:
        raise ValueError(f"MODEL.GALW.EPOCH_ITERS: an epoch must be >= 1 iteration, got {epoch_iters}")


def check_probe_schedule(mode: str, epoch_iters: int, probe_period: int, probe_epochs: int,
                         max_iter: Optional[int] = None):
    """MODE, EPOCH_ITERS, PROBE_PERIOD and PROBE_EPOCHS of a probing training (and SOLVER.MAX_ITER)."""
    check_choice("MODE", mode, MODES)
    check_epoch_iters(epoch_iters)
    if not 1 <= probe_period <= epoch_iters:
        raise ValueError(
            f"MODEL.GALW.PROBE_PERIOD is {probe_period}, expected 1..{epoch_iters} (one epoch), "
            "so that every epoch has a Gamma measurement"
        )
    if probe_epochs < 0:
        raise ValueError(f"MODEL.GALW.PROBE_EPOCHS is {probe_epochs}: expected 0 (the whole training) or >= 2")
    if probe_epochs == 1 or (mode == "single_run" and probe_epochs < 2):
        raise ValueError(
            f"MODEL.GALW.PROBE_EPOCHS is {probe_epochs}: Eq. 7 takes differences between epochs, so probing "
            "needs >= 2 epochs of Gamma" + (" (single_run mode)" if mode == "single_run" else " (or 0: the whole first training)")
        )
    if max_iter is None:
        return
    if mode == "single_run" and max_iter <= probe_epochs * epoch_iters:
        raise ValueError(
            f"SOLVER.MAX_ITER is {max_iter}, but single_run probes MODEL.GALW.PROBE_EPOCHS "
            f"({probe_epochs}) x {epoch_iters} iterations (MODEL.GALW.EPOCH_ITERS) = {probe_epochs * epoch_iters} "
            "first: the training would end before the grouped weighting starts"
        )
    if mode == "two_phase" and probe_epochs == 0 and max_iter < 2 * epoch_iters:
        raise ValueError(
            f"SOLVER.MAX_ITER is {max_iter}: with MODEL.GALW.PROBE_EPOCHS 0 phase one records Gamma over "
            f"the whole training, which must last >= 2 epochs of {epoch_iters} iterations "
            f"(MODEL.GALW.EPOCH_ITERS) for Eq. 7"
        )


def validate_groups(groups: Sequence[Sequence[str]], tasks: Sequence[str]):
    """Each task in exactly one group, no unknown task, no empty group."""
    seen = {}
    for gi, group in enumerate(groups):
        if not group:
            raise ValueError(f"task grouping: group {gi} is empty")
        for t in group:
            if t not in tasks:
                raise ValueError(f"task grouping: group {gi} holds '{t}', which is not in MODEL.GALW.TASKS")
            if t in seen:
                raise ValueError(f"task grouping: task '{t}' is in group {seen[t]} and in group {gi}")
            seen[t] = gi
    unheld = [t for t in tasks if t not in seen]
    if unheld:
        raise ValueError(f"task grouping: task(s) {unheld} are in no group")


def load_groups_file(path: str, tasks: Optional[Sequence[str]] = None) -> List[List[str]]:
    """The "groups" of a ``galw_groups.json`` (the GALW hook writes it), checked against ``tasks``."""
    if not os.path.isfile(path):
        raise ValueError(f"MODEL.GALW.GROUPS_FILE '{path}' does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"MODEL.GALW.GROUPS_FILE '{path}' cannot be read as JSON: {e}") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(t, str) for t in g) for g in groups
    ):
        raise ValueError(f"MODEL.GALW.GROUPS_FILE '{path}': expected {{\"groups\": [[task, ...], ...]}}")
    if tasks is not None:
        try:
            validate_groups(groups, list(tasks))
        except ValueError as e:
            raise ValueError(f"MODEL.GALW.GROUPS_FILE '{path}' does not fit MODEL.GALW.TASKS: {e}") from None
    return groups


def check_galw_config(cfg, epoch_iters: Optional[int] = None):
    """Raise ValueError naming the key for any MODEL.GALW setting GALW cannot train with.

    Args:
        epoch_iters: iterations per Gamma epoch; with it, the grouping and the probing schedule
            are checked too (the GALW hook passes it; the weighting alone does not know the data).
    """
    g = cfg.MODEL.GALW
    tasks = list(g.TASKS)
    check_tasks(tasks, list(g.TASK_KINDS))
    check_choice("WEIGHTING", g.WEIGHTING, WEIGHTING_METHODS)
    check_choice("PROBE_WEIGHTING", g.PROBE_WEIGHTING, WEIGHTING_METHODS)
    check_manual_weights(g.MANUAL_WEIGHTS, tasks, g.WEIGHTING)
    check_manual_weights(g.MANUAL_WEIGHTS, tasks, g.PROBE_WEIGHTING)
    check_choice("GAMMA_LOSS", g.GAMMA_LOSS, GAMMA_LOSSES)
    check_choice("GROUP_LOG_SIGMA", g.GROUP_LOG_SIGMA, GROUP_LOG_SIGMA)
    check_choice("GROUPING", g.GROUPING, GROUPINGS)
    check_choice("LINKAGE", g.LINKAGE, LINKAGES)
    check_choice("MODE", g.MODE, MODES)
    check_shared_prefixes(list(g.SHARED_PARAM_PREFIXES))
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
    if g.EPOCH_ITERS < 0:
        raise ValueError(f"MODEL.GALW.EPOCH_ITERS is {g.EPOCH_ITERS}: expected 0 (from the data) or >= 1")
    if g.GROUPS_FILE:
        load_groups_file(g.GROUPS_FILE, tasks)
        return
    if epoch_iters is None:
        return  # the weighting alone: the grouping and its schedule are the GALW hook's
    if g.GROUPING in ("galw", "random"):
        check_num_groups(int(g.NUM_GROUPS), len(tasks))
    if g.GROUPING == "explicit":
        if not g.GROUPS:
            raise ValueError("MODEL.GALW.GROUPING is 'explicit' but MODEL.GALW.GROUPS is empty")
        try:
            validate_groups([list(x) for x in g.GROUPS], tasks)
        except ValueError as e:
            raise ValueError(f"MODEL.GALW.GROUPS: {e}") from None
    if g.GROUPING == "branch" and not g.BRANCH_PREFIXES:
        raise ValueError("MODEL.GALW.GROUPING is 'branch' but MODEL.GALW.BRANCH_PREFIXES is empty")
    if g.GROUPING == "galw":
            check_probe_schedule(g.MODE, epoch_iters, int(g.PROBE_PERIOD), int(g.PROBE_EPOCHS), int(cfg.SOLVER.MAX_ITER))
