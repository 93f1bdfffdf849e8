"""FCOS target assignment for the AlignPS dense head (one image at a time).

A location (point) on level ``l`` is a positive of a ground-truth box when
1. it lies inside the box's CENTRE REGION: a square of half-side ``radius * stride_l``
   around the box centre, clipped to the box ("center sampling"), and
2. its largest regression distance max(l, t, r, b) lies in the level's size range
   ``[lo_l, hi_l]`` (so the level, not an anchor, decides which box sizes it owns).
A location claimed by several boxes takes the smallest box. AlignPS's own setting
gives every size to P3 (``[[-1, inf]]``); FCOS splits sizes over P3..P5.
"""
from typing import List, Sequence, Tuple

import torch

__all__ = ["level_points", "assign_targets", "centerness_target"]


def level_points(sizes: Sequence[Tuple[int, int]], strides: Sequence[int], device=None) -> List[torch.Tensor]:
    """Image coordinates [H*W, 2] (x, y) of each level's locations: ``index * stride + stride // 2``."""
    points = []
    for (h, w), s in zip(sizes, strides):
        ys = torch.arange(h, dtype=torch.float32, device=device) * s + s // 2
        xs = torch.arange(w, dtype=torch.float32, device=device) * s + s // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return points


def assign_targets(
    points: List[torch.Tensor],
    strides: Sequence[int],
    size_ranges: Sequence[Sequence[float]],
    gt_boxes: torch.Tensor,
    center_radius: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assign the boxes of one image to the locations of all levels (concatenated).

    Returns ``matched`` [P] (index of the owning box, -1 for background) and
    ``ltrb`` [P, 4] (pixel distances from each location to its box's sides; zeros
    for background).
    """
    if not (len(points) == len(strides) == len(size_ranges)):
        raise ValueError(
            f"assign_targets: {len(points)} levels of points, {len(strides)} strides and "
            f"{len(size_ranges)} size ranges (MODEL.ALIGNPS.SIZE_RANGES) must agree"
        )
    all_points = torch.cat(points, dim=0)
    num_points = all_points.shape[0]
    if gt_boxes.numel() == 0:
        return (
            torch.full((num_points,), -1, dtype=torch.long, device=all_points.device),
            all_points.new_zeros((num_points, 4)),
        )
    gt_boxes = gt_boxes.to(all_points)
    per_point_stride = torch.cat([p.new_full((p.shape[0],), float(s)) for p, s in zip(points, strides)])
    ranges = torch.cat([p.new_tensor(r).expand(p.shape[0], 2) for p, r in zip(points, size_ranges)])

    xs, ys = all_points[:, 0:1], all_points[:, 1:2]  # [P, 1]
    x1, y1, x2, y2 = gt_boxes.unbind(dim=1)  # [G]
    ltrb = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], dim=2)  # [P, G, 4]

    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = per_point_stride[:, None] * center_radius  # [P, 1]
    cx1 = torch.maximum(cx - half, x1)
    cy1 = torch.maximum(cy - half, y1)
    cx2 = torch.minimum(cx + half, x2)
    cy2 = torch.minimum(cy + half, y2)
    in_center = torch.stack([xs - cx1, ys - cy1, cx2 - xs, cy2 - ys], dim=2).min(dim=2).values > 0

    max_dist = ltrb.max(dim=2).values
    in_range = (max_dist >= ranges[:, 0:1]) & (max_dist <= ranges[:, 1:2])

    areas = ((x2 - x1) * (y2 - y1))[None].expand(num_points, -1).clone()
    areas[~(in_center & in_range)] = float("inf")
    min_area, matched = areas.min(dim=1)
    matched[torch.isinf(min_area)] = -1
    fg = matched >= 0
    out_ltrb = all_points.new_zeros((num_points, 4))
    out_ltrb[fg] = ltrb[fg, matched[fg]]
    return matched, out_ltrb


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of distances [N, 4]."""
    lr = ltrb[:, [0, 2]]
    tb = ltrb[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * (
        tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()
