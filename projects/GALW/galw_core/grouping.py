"""Task grouping: GALW's clustering of gradient-magnitude trends (Eqs. 7-8) and fixed groupings.

Every function returns groups in a canonical order, so the same input gives the same
groups: tasks inside a group sorted by name; GALW groups ordered by their mean s*
(most decreasing trend first); fixed groupings in the order their definition gives.
"""
import logging
import math
from typing import Dict, List, Sequence

import numpy as np
from scipy.cluster.hierarchy import cut_tree, linkage as scipy_linkage

from .config import LINKAGES
from .validation import check_choice, check_num_groups

__all__ = [
    "average_slope",
    "squash_slope",
    "group_tasks",
    "cluster_s_star",
    "groups_by_prefix",
    "random_groups",
    "per_task_groups",
    "single_group",
]

logger = logging.getLogger(__name__)



def average_slope(series: Sequence[float]) -> float:
    """Eq. 7: the mean of consecutive differences of a per-epoch Gamma series.

    (The paper prints the summand with typo'd indices; the intent, an average slope, is
    ``mean_n (Gamma_{n+1} - Gamma_n)``, i.e. ``(Gamma_N - Gamma_1) / (N - 1)``.)
    """
    series = [float(x) for x in series]
    if len(series) < 2:
        raise ValueError(f"Eq. 7 needs Gamma for at least 2 epochs, got {len(series)}")
    return float(np.mean(np.diff(series)))


def squash_slope(s: float) -> float:
    """Eq. 8: s* = sign(s) * sigmoid(log|s|) (natural log; equals s / (1 + |s|)); s = 0 gives 0."""
    if s == 0.0:
        return 0.0
    return math.copysign(1.0 / (1.0 + math.exp(-math.log(abs(s)))), s)


def cluster_s_star(s_star: Dict[str, float], num_groups: int, linkage: str = "ward") -> List[List[str]]:
    """Hierarchical clustering of the 1-D s* values into exactly ``num_groups`` groups."""
    tasks = sorted(s_star)
    check_num_groups(num_groups, len(tasks))
    check_choice("LINKAGE", linkage, LINKAGES)
    if num_groups == len(tasks):
        labels = list(range(len(tasks)))
    elif num_groups == 1:
        labels = [0] * len(tasks)
    else:
        x = np.array([[s_star[t]] for t in tasks], dtype=np.float64)
        labels = cut_tree(scipy_linkage(x, method=linkage), n_clusters=num_groups).reshape(-1).tolist()
    groups: Dict[int, List[str]] = {}
    for t, lab in zip(tasks, labels):
        groups.setdefault(lab, []).append(t)
    ordered = sorted(groups.values(), key=lambda g: (float(np.mean([s_star[t] for t in g])), g[0]))
    return [sorted(g) for g in ordered]


def group_tasks(history: Dict[str, Sequence[float]], num_groups: int, linkage: str = "ward") -> List[List[str]]:
    """GALW's grouping (Algorithm 1, lines 7-11): {task: [Gamma per epoch]} -> groups of task names."""
    return cluster_s_star(slopes_and_s_star(history)[1], num_groups, linkage)


def slopes_and_s_star(history: Dict[str, Sequence[float]]):
    """({task: s} by Eq. 7, {task: s*} by Eq. 8)."""
    if not history:
        raise ValueError("group_tasks: the Gamma history is empty")
    slopes = {}
    for t, series in history.items():
        try:
            slopes[t] = average_slope(series)
        except ValueError as e:
            raise ValueError(f"group_tasks: task '{t}': {e}") from None
    return slopes, {t: squash_slope(s) for t, s in slopes.items()}


def groups_by_prefix(tasks: Sequence[str], branch_prefixes: Sequence[Sequence[str]]) -> List[List[str]]:
    """One group per branch; a branch is a list of loss-name prefixes (e.g. ["loss_rpn_", "loss_nae_"])."""
    if not branch_prefixes:
        raise ValueError("MODEL.GALW.GROUPING is 'branch' but MODEL.GALW.BRANCH_PREFIXES is empty")
    groups = [[] for _ in branch_prefixes]
    for t in tasks:
        hits = [
            bi
            for bi, prefixes in enumerate(branch_prefixes)
            if any(t.startswith(p) for p in _as_list(prefixes))
        ]
        if len(hits) != 1:
            raise ValueError(
                f"MODEL.GALW.BRANCH_PREFIXES: task '{t}' matches {len(hits)} branches "
                f"({[branch_prefixes[i] for i in hits]}), expected exactly one"
            )
        groups[hits[0]].append(t)
    empty = [branch_prefixes[i] for i, g in enumerate(groups) if not g]
    if empty:
        raise ValueError(f"MODEL.GALW.BRANCH_PREFIXES: branch(es) {empty} match no task")
    return [sorted(g) for g in groups]


def random_groups(tasks: Sequence[str], num_groups: int, seed: int) -> List[List[str]]:
    """A random partition into ``num_groups`` non-empty groups, reproducible from ``seed``."""
    tasks = sorted(tasks)
    check_num_groups(num_groups, len(tasks))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tasks))
    labels = np.empty(len(tasks), dtype=np.int64)
    labels[order[:num_groups]] = np.arange(num_groups)  # every group gets one task
    labels[order[num_groups:]] = rng.integers(0, num_groups, size=len(tasks) - num_groups)
    return [sorted(t for t, lab in zip(tasks, labels) if lab == g) for g in range(num_groups)]


def per_task_groups(tasks: Sequence[str]) -> List[List[str]]:
    return [[t] for t in tasks]


def single_group(tasks: Sequence[str]) -> List[List[str]]:
    return [sorted(tasks)]


def _as_list(prefixes):
    return [prefixes] if isinstance(prefixes, str) else list(prefixes)
