"""The attribute branch: ALMs over a pyramid of 32x32 box crops, masked BCE (task t11)."""
from .alm import AttributeLocalization, constrained_affine
from .branch import AttributeBranch
from .loss import UNKNOWN, check_attribute_targets, masked_attribute_bce

__all__ = [
    "AttributeBranch",
    "AttributeLocalization",
    "UNKNOWN",
    "check_attribute_targets",
    "constrained_affine",
    "masked_attribute_bce",
]
