"""Binary cross-entropy over attribute labels where -1 means "unknown"."""
import torch
import torch.nn.functional as F

__all__ = ["UNKNOWN", "masked_attribute_bce", "check_attribute_targets"]

#: Attribute label of a box whose attribute is not known: it contributes no loss.
UNKNOWN = -1


def check_attribute_targets(targets: torch.Tensor, num_attributes: int, where: str = "gt_attributes") -> None:
    """Raise a clear error unless ``targets`` is ``[N, num_attributes]`` with values in {-1, 0, 1}."""
    if targets.dim() != 2 or targets.shape[1] != num_attributes:
        raise ValueError(
            f"{where} must have shape [N, {num_attributes}] (MODEL.ATTRIBUTE.NUM_ATTRIBUTES), got {tuple(targets.shape)}"
        )
    bad = ~((targets == 0) | (targets == 1) | (targets == UNKNOWN))
    if bool(bad.any()):
        values = sorted({int(v) for v in targets[bad].tolist()})
        raise ValueError(f"{where} may hold only 0, 1 and -1 (unknown); found {values}")


def masked_attribute_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known (box, attribute) labels.

    Unknown labels (-1) are left out of both the sum and the count. With no known
    label the result is ``0 * logits.sum()``: zero, with a zero gradient, and still
    attached to the graph so every parameter is used (DDP needs that).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and attribute targets {tuple(targets.shape)} differ in shape")
    known = targets != UNKNOWN
    num_known = int(known.sum())
    if num_known == 0:
        return logits.sum() * 0.0
    losses = F.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0).to(logits.dtype), weight=known.to(logits.dtype), reduction="sum"
    )
    return losses / num_known
