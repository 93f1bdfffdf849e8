"""The anchor-free AlignPS branch: AFA neck, FCOS dense head, dense re-id (tasks t6..t10)."""
from .afa import AFAFPN, DeformConvWithOffsets
from .branch import AlignPSBranch
from .head import DenseHead
from .losses import BatchHardTripletLoss, distances_to_boxes, weighted_giou_loss
from .targets import assign_targets, centerness_target, level_points

__all__ = [
    "AFAFPN",
    "AlignPSBranch",
    "BatchHardTripletLoss",
    "DeformConvWithOffsets",
    "DenseHead",
    "assign_targets",
    "centerness_target",
    "distances_to_boxes",
    "level_points",
    "weighted_giou_loss",
]
