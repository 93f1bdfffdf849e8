"""The GALW core: weight any detectron2 model's loss dict by groups of tasks (paper Sec. 3).

Model-agnostic on purpose: nothing here imports person-search code, so a user puts GALW on
any detectron2 model with ``add_galw_core_config(cfg)``, ``MODEL.GALW.*`` keys naming the
loss-dict entries, and :func:`install_galw` in their DefaultTrainer's ``build_hooks``.

Importing it closes detectron2 version gaps first (:mod:`galw_core.compat`, a no-op on an
official build) and registers nothing: no dataset, model or evaluator.
"""
from . import compat

compat.apply()

from .config import add_galw_core_config  # noqa: E402
from .grouping import group_tasks  # noqa: E402
from .hook import GROUPS_FILENAME, GALWHook  # noqa: E402
from .probe import GradientProbe, select_shared_parameters  # noqa: E402
from .solver import build_optimizer  # noqa: E402
from .train_step import (  # noqa: E402
    GALWAMPTrainer,
    GALWSimpleTrainer,
    attach_weighting,
    get_weighting,
    install_galw,
)
from .two_phase import needs_two_phases, train_two_phase  # noqa: E402
from .validation import check_galw_config, load_groups_file  # noqa: E402
from .weighting import LossWeighting  # noqa: E402

__all__ = [
    "GALWAMPTrainer",
    "GALWHook",
    "GALWSimpleTrainer",
    "GROUPS_FILENAME",
    "GradientProbe",
    "LossWeighting",
    "add_galw_core_config",
    "attach_weighting",
    "build_optimizer",
    "check_galw_config",
    "get_weighting",
    "group_tasks",
    "install_galw",
    "load_groups_file",
    "needs_two_phases",
    "select_shared_parameters",
    "train_two_phase",
]
