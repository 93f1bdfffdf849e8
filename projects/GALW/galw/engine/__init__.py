"""The person-search trainer (as DensePose keeps its own in ``densepose/engine``)."""
from .logs import setup_galw_logger, setup_logging
from .trainer import Trainer

__all__ = ["Trainer", "setup_galw_logger", "setup_logging"]
