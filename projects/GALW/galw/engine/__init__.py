"""The person-search trainer (as DensePose keeps its own in ``densepose/engine``)."""
from .trainer import Trainer

__all__ = ["Trainer"]
