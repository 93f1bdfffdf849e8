"""The paper's task numbering: which loss key is t1..t11, and each task's GALW kind.

The paper names tasks only by index (Table 1's weights w1..w10, Tables 4-5's groups, Fig. 3's
t3). The order here is the order in which the ROI-AlignPS reference computes its losses: the
RPN's, then the NAE ROI head's box, person/background and re-id losses, then the AlignPS head's
five; docs/fidelity.md ("Task order") gives the evidence. Every config's ``MODEL.GALW.TASKS``,
``TASK_KINDS`` and ``MANUAL_WEIGHTS`` are positional in this order (tests/test_configs.py and
tests/test_task_order.py check them against it).
"""
from typing import Dict, List, Sequence, Tuple

__all__ = ["BRANCH_TASKS", "TASK_KINDS", "tasks_of", "task_key"]

#: Each branch's loss keys, in task order: NAE t1..t5, AlignPS t6..t10, attributes t11.
BRANCH_TASKS: Dict[str, Tuple[str, ...]] = {
    "NAEBranch": ("loss_rpn_cls", "loss_rpn_box", "loss_nae_box", "loss_nae_det", "loss_nae_oim"),
    "AlignPSBranch": ("loss_aps_cls", "loss_aps_box", "loss_aps_ctr", "loss_aps_oim", "loss_aps_tri"),
    "AttributeBranch": ("loss_attr",),
}

#: Eq. 5's k: 2 for the box regressions and the triplet loss (regression-like), 1 otherwise.
TASK_KINDS: Dict[str, str] = {
    key: "regression" if key in ("loss_rpn_box", "loss_nae_box", "loss_aps_box", "loss_aps_tri") else "classification"
    for keys in BRANCH_TASKS.values()
    for key in keys
}


def tasks_of(branches: Sequence[str]) -> List[str]:
    """The loss keys of a model built from ``branches`` (MODEL.PERSON_SEARCH.BRANCHES), in task order."""
    unknown = [b for b in branches if b not in BRANCH_TASKS]
    if unknown:
        raise KeyError(f"MODEL.PERSON_SEARCH.BRANCHES: no task order for {unknown}; known: {list(BRANCH_TASKS)}")
    chosen = {key for b in branches for key in BRANCH_TASKS[b]}
    return [key for key in TASK_KINDS if key in chosen]


def task_key(index: int) -> str:
    """The loss key of the paper's task t<index> (1..11)."""
    ordered = list(TASK_KINDS)
    if not 1 <= index <= len(ordered):
        raise IndexError(f"the paper numbers tasks t1..t{len(ordered)}; got t{index}")
    return ordered[index - 1]
