"""Losses of the AlignPS dense head that are not library calls: weighted GIoU and batch-hard triplet."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

__all__ = ["distances_to_boxes", "weighted_giou_loss", "BatchHardTripletLoss"]


def distances_to_boxes(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Boxes [N, 4] (x1, y1, x2, y2) from locations [N, 2] and distances to the sides [N, 4]."""
    return torch.stack(
        [points[:, 0] - ltrb[:, 0], points[:, 1] - ltrb[:, 1], points[:, 0] + ltrb[:, 2], points[:, 1] + ltrb[:, 3]],
        dim=1,
    )


def weighted_giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, normalizer: float) -> torch.Tensor:
    """``sum_i w_i * (1 - GIoU(pred_i, target_i)) / normalizer`` (FCOS weights by centerness)."""
    per_box = generalized_box_iou_loss(pred, target, reduction="none")
    return (per_box * weight).sum() / normalizer


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) over labeled embeddings.

    For each labeled anchor: the farthest same-identity sample and the nearest
    other-identity sample (Euclidean distance of L2-normalised features), hinge
    ``max(0, d_ap - d_an + margin)``, averaged over the anchors. Distances are
    ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))`` as the AlignPS reference
    (mmdet/models/dense_heads/triplet_loss.py:51-54). ``normalize=False`` takes the features as
    given (the reference's lookup-table rows join the batch unnormalised).
    Unlabeled samples (pid < 0) are dropped. With fewer than two identities there is
    no negative and the loss is ``0 * sum(features)`` (graph kept for DDP).
    """

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def forward(self, features: torch.Tensor, pids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        keep = pids >= 0
        x = features[keep]
        x = F.normalize(x, dim=1) if normalize else x
        y = pids[keep]
        if y.unique().numel() < 2:
            return features.sum() * 0.0
        sq = x.pow(2).sum(dim=1)
        dist = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()
        same = y[:, None] == y[None, :]
        d_ap = dist.masked_fill(~same, float("-inf")).max(dim=1).values
        d_an = dist.masked_fill(same, float("inf")).min(dim=1).values
        return F.relu(d_ap - d_an + self.margin).mean()
