"""GALW-PS: Grouped Adaptive Loss Weighting for person search, as a detectron2 project.

Importing the package closes detectron2 compatibility gaps first (no-op on an
official build), then registers the project's datasets, models and heads.
"""
from galw_core import compat

compat.apply()

from . import data, evaluation, modeling  # noqa: E402,F401  (registration on import)
from .config import add_galw_config  # noqa: E402

__all__ = ["add_galw_config"]
__version__ = "0.1.0"
