"""``AlignPSBranch``: the anchor-free AlignPS person-search branch (tasks t6..t10).

Own res5 stage on the shared res4 -> AFA neck over (res3, res4, res5) -> FCOS dense
head; the AFA map itself (minus its per-image spatial mean, as the reference's
"sub" variant) is the dense re-id embedding, so detection and re-id read the same
aligned features. Training returns one key per task:
``loss_aps_cls`` (focal), ``loss_aps_box`` (GIoU), ``loss_aps_ctr`` (centerness BCE),
``loss_aps_oim`` (OIM) and ``loss_aps_tri`` (batch-hard triplet), all on the
locations that target assignment makes positive; the focal loss also on every location
of the training-only negative levels (MODEL.ALIGNPS.NEGATIVE_LEVELS).
"""
import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss
from torch import nn
from torch.fx.experimental.symbolic_shapes import guard_or_false
from torchvision.ops import nms, roi_align

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.logger import log_every_n_seconds

from galw_core.distributed import all_reduce_mean_
from ..backbone import build_res5_stage, res5_out_channels
from ..branch import PS_BRANCH_REGISTRY, PersonSearchBranch
from ..exportable import boxes_of, clip_boxes, instances_of
from ..nae import oim_num_labeled
from ..oim import OIMLoss
from .afa import AFAFPN
from .head import DenseHead
from .losses import BatchHardTripletLoss, distances_to_boxes, weighted_giou_loss
from .targets import assign_targets, centerness_target, level_points

__all__ = ["AlignPSBranch"]

EMBED_POOLINGS = ("center", "roi_average")
#: Most trained levels, real and negative-only together: P3..P7 as the reference
#: (fcos_reid_head_focal_sub_triqueue3.py:66, five strides and regress ranges).
MAX_TRAINING_LEVELS = 5


def _check_negative_levels(value, num_real: int):
    """MODEL.ALIGNPS.NEGATIVE_LEVELS: an int >= 0 with at most MAX_TRAINING_LEVELS levels in all. The
    one check of the value, at build time (from_config); the branch and its neck take it as given."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"MODEL.ALIGNPS.NEGATIVE_LEVELS must be an int >= 0; got {value!r}")
    if num_real + value > MAX_TRAINING_LEVELS:
        raise ValueError(
            f"MODEL.ALIGNPS.NEGATIVE_LEVELS: len(MODEL.ALIGNPS.SIZE_RANGES) + NEGATIVE_LEVELS must be at most "
            f"{MAX_TRAINING_LEVELS} (P3..P7); got {num_real} + {value}"
        )


def _mean_over_ranks(value: float, device: torch.device) -> float:
    """Average a count over data-parallel ranks (FCOS normalises by the global positive count)."""
    return float(all_reduce_mean_(torch.tensor([value], dtype=torch.float64, device=device)))


@PS_BRANCH_REGISTRY.register()
class AlignPSBranch(PersonSearchBranch):
    """The anchor-free person-search branch of AlignPS (Yan et al., CVPR 2021)."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        res5: nn.Module,
        afa: AFAFPN,
        head: DenseHead,
        oim: OIMLoss,
        triplet: BatchHardTripletLoss,
        strides: List[int],
        size_ranges: List[List[float]],
        negative_levels: int = 0,
        center_radius: float,
        focal_alpha: float,
        focal_gamma: float,
        triplet_with_lut: bool,
        score_thresh: float,
        pre_nms_topk: int,
        nms_thresh: float,
        max_detections: int,
        embed_pooling: str,
    ):
        super().__init__()
        if embed_pooling not in EMBED_POOLINGS:
            raise ValueError(f"MODEL.ALIGNPS.EMBED_POOLING must be one of {EMBED_POOLINGS}; got {embed_pooling!r}")
        if len(strides) != len(size_ranges) + negative_levels:
            raise ValueError(
                f"AlignPSBranch: one stride per trained level, len(MODEL.ALIGNPS.SIZE_RANGES) + "
                f"MODEL.ALIGNPS.NEGATIVE_LEVELS = {len(size_ranges)} + {negative_levels}; got strides {strides}"
            )
        self.in_features = in_features
        self.res5 = res5
        self.afa = afa
        self.head = head
        self.oim = oim
        self.triplet = triplet
        # real levels (detection, re-id, inference) and the training-only negative levels after them
        self.strides = list(strides[: len(size_ranges)])
        self.negative_strides = list(strides[len(size_ranges):])
        self.size_ranges = size_ranges
        self.center_radius = center_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.triplet_with_lut = triplet_with_lut
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections
        self.embed_pooling = embed_pooling

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        a = cfg.MODEL.ALIGNPS
        in_features = list(a.IN_FEATURES)
        if len(in_features) != 2 or any(f not in input_shape for f in in_features):
            raise ValueError(
                f"MODEL.ALIGNPS.IN_FEATURES must name two backbone outputs (finer first, the second feeds the "
                f"branch's res5), e.g. ['res3', 'res4']; got {in_features} (backbone outputs {sorted(input_shape)})"
            )
        fine, coarse = input_shape[in_features[0]], input_shape[in_features[1]]
        res5 = build_res5_stage(cfg)
        res5_channels = res5_out_channels(cfg)
        size_ranges = [list(map(float, r)) for r in a.SIZE_RANGES]
        if not 1 <= len(size_ranges) <= 3 or any(len(r) != 2 for r in size_ranges):
            raise ValueError(
                f"MODEL.ALIGNPS.SIZE_RANGES must hold 1 to 3 [lo, hi] pairs (P3, P4, P5); got {a.SIZE_RANGES}"
            )
        _check_negative_levels(a.NEGATIVE_LEVELS, len(size_ranges))
        num_levels = len(size_ranges) + a.NEGATIVE_LEVELS
        # the AFA's deformable outputs sit at the input strides; each extra stride-2 conv doubles the last
        strides = [fine.stride, coarse.stride, coarse.stride * 2][:num_levels]
        strides += [strides[-1] * 2 ** k for k in range(1, num_levels - len(strides) + 1)]
        channels = a.FPN_CHANNELS
        return {
            "in_features": in_features,
            "res5": res5,
            "afa": AFAFPN(
                [fine.channels, coarse.channels, res5_channels], channels, len(size_ranges), a.DEFORM_OFFSET_INIT,
                a.DEFORM_CONV_IMPL, negative_levels=a.NEGATIVE_LEVELS,
            ),
            "head": DenseHead(
                channels, a.NUM_CONVS, a.HEAD_NORM, strides, a.PRIOR_PROB, dcn_on_last_conv=a.DCN_ON_LAST_CONV,
                deform_impl=a.DEFORM_CONV_IMPL,
            ),
            "oim": OIMLoss(
                channels,
                oim_num_labeled(cfg),
                a.OIM_QUEUE_SIZE,
                a.OIM_MOMENTUM,
                a.OIM_TEMPERATURE,
                focal_gamma=a.OIM_FOCAL_GAMMA,
                renormalize=a.OIM_RENORMALIZE,
                queue_temperature=a.OIM_QUEUE_TEMPERATURE or None,
                normalizer=a.OIM_NORMALIZER,
                queue_channels=a.OIM_QUEUE_CHANNELS,
            ),
            "triplet": BatchHardTripletLoss(a.TRIPLET_MARGIN),
            "strides": strides,
            "size_ranges": size_ranges,
            "negative_levels": a.NEGATIVE_LEVELS,
            "center_radius": a.CENTER_SAMPLING_RADIUS,
            "focal_alpha": a.FOCAL_ALPHA,
            "focal_gamma": a.FOCAL_GAMMA,
            "triplet_with_lut": a.TRIPLET_WITH_LUT,
            "score_thresh": a.SCORE_THRESH_TEST,
            "pre_nms_topk": a.PRE_NMS_TOPK_TEST,
            "nms_thresh": a.NMS_THRESH_TEST,
            "max_detections": a.DETECTIONS_PER_IMAGE,
            "embed_pooling": a.EMBED_POOLING,
        }

    # ------------------------------------------------------------------ features
    def dense_features(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """AFA maps (finest first); the real levels, also the embedding maps, minus their per-image spatial
        mean, the training-only negative levels as they are (the reference subtracts it on P3 only,
        fcos_reid_head_focal_sub_triqueue3.py:188-191)."""
        fine, coarse = (features[f] for f in self.in_features)
        maps = self.afa([fine, coarse, self.res5(coarse)])
        real = len(self.size_ranges)
        return [m - m.mean(dim=(2, 3), keepdim=True) for m in maps[:real]] + list(maps[real:])

    @staticmethod
    def _flatten(maps: List[torch.Tensor]) -> torch.Tensor:
        """Per-level [N, C, H, W] -> [N, sum(HW), C] (level-major, row-major locations)."""
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Dict[str, torch.Tensor]:
        if not self.training:
            raise RuntimeError("AlignPSBranch.forward computes training losses; use detect()/embed() in eval")
        if gt_instances is None:
            raise ValueError("AlignPSBranch.forward needs gt_instances (gt_boxes, gt_pids) in training")
        for i, inst in enumerate(gt_instances):
            if not inst.has("gt_pids"):
                raise ValueError(f"AlignPSBranch: training instances of image {i} have no 'gt_pids' field")
        maps = self.dense_features(features)
        logits, dists, ctrs = self.head(maps)
        return self.losses(maps, logits, dists, ctrs, gt_instances)

    def losses(
        self,
        maps: List[torch.Tensor],
        logits: List[torch.Tensor],
        dists: List[torch.Tensor],
        ctrs: List[torch.Tensor],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """The five task losses from per-level embedding maps and head outputs (pixel distances).

        Every list holds the real levels then the negative-only ones. Normalisers as the AlignPS reference
        (mmdet/models/dense_heads/fcos_reid_head_focal_sub_triqueue3.py): focal loss by ``num_pos + num_imgs``
        (line 312), GIoU by the sum of centerness targets (line 347), centerness BCE by ``num_pos`` (its mean,
        line 348); counts are averaged over data-parallel ranks. The focal loss also sums over every location
        of the negative levels with target 0 (their regress range (-2, -1), line 66, owns no box); the other
        four losses read positives, which lie on the real levels only.
        """
        real = len(self.size_ranges)
        num_levels = real + len(self.negative_strides)
        if not len(maps) == len(logits) == len(dists) == len(ctrs) == num_levels:
            raise ValueError(
                f"AlignPSBranch.losses: {num_levels} levels (len(MODEL.ALIGNPS.SIZE_RANGES) + "
                f"MODEL.ALIGNPS.NEGATIVE_LEVELS) in every list; got {len(maps)} maps, {len(logits)} logits, "
                f"{len(dists)} distances, {len(ctrs)} centerness maps"
            )
        points = level_points([m.shape[-2:] for m in maps[:real]], self.strides, device=maps[0].device)
        all_points = torch.cat(points, dim=0)

        matched, ltrb_t, pids = [], [], []
        unassigned = 0
        for inst in gt_instances:
            m, t = assign_targets(points, self.strides, self.size_ranges, inst.gt_boxes.tensor, self.center_radius)
            unassigned += len(inst) - int(m[m >= 0].unique().numel())
            matched.append(m)
            ltrb_t.append(t)
            p = inst.gt_pids.to(m.device)
            pids.append(torch.where(m >= 0, p[m.clamp(min=0)], torch.full_like(m, -2)))
        matched, ltrb_t, pids = torch.stack(matched), torch.stack(ltrb_t), torch.stack(pids)
        if unassigned:
            log_every_n_seconds(
                logging.WARNING,
                f"AlignPS: {unassigned} ground-truth boxes of this batch own no location (smaller than a "
                "stride or outside every MODEL.ALIGNPS.SIZE_RANGES) and are not trained on",
                n=60,
                name=__name__,
            )
        fg = matched >= 0
        # over every trained location: the negative levels' locations follow, all background; the head
        # outputs of those levels stay in the graph (indexed, zero gradient) so every Scale is used (DDP)
        num_negative = sum(m.shape[-2] * m.shape[-1] for m in maps[real:])
        fg_all = torch.cat([fg, fg.new_zeros((fg.shape[0], num_negative))], dim=1)

        logits = self._flatten(logits).squeeze(2)
        dists = self._flatten(dists)
        ctrs = self._flatten(ctrs).squeeze(2)
        embeds = self._flatten(maps[:real])

        num_pos = int(fg.sum())
        num_pos_avg = max(_mean_over_ranks(float(num_pos), logits.device), 1.0)
        cls_norm = _mean_over_ranks(float(num_pos + len(gt_instances)), logits.device)
        loss_cls = sigmoid_focal_loss(
            logits, fg_all.to(logits.dtype), alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / cls_norm

        pos_points = all_points[None].expand(len(gt_instances), -1, -1)[fg]
        pos_ltrb = ltrb_t[fg]
        pos_ctr_t = centerness_target(pos_ltrb)
        ctr_norm = max(_mean_over_ranks(float(pos_ctr_t.sum()), logits.device), 1e-6)
        if num_pos > 0:
            loss_box = weighted_giou_loss(
                distances_to_boxes(pos_points, dists[fg_all]), distances_to_boxes(pos_points, pos_ltrb), pos_ctr_t,
                ctr_norm,
            )
        else:
            loss_box = dists.sum() * 0.0
        loss_ctr = F.binary_cross_entropy_with_logits(ctrs[fg_all], pos_ctr_t, reduction="sum") / num_pos_avg

        pos_embeds = embeds[fg]
        pos_pids = pids[fg]
        loss_tri = self._triplet_loss(pos_embeds, pos_pids)
        loss_oim = self.oim(pos_embeds, pos_pids)
        return {
            "loss_aps_cls": loss_cls,
            "loss_aps_box": loss_box,
            "loss_aps_ctr": loss_ctr,
            "loss_aps_oim": loss_oim,
            "loss_aps_tri": loss_tri,
        }

    def _triplet_loss(self, embeds: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Batch-hard triplet over the L2-normalised labeled positive locations plus, as the reference's
        ``triqueue`` heads, ONE lookup-table row per labeled location (duplicates and never-updated zero
        rows included, rows not renormalised): fcos_reid_head_focal_sub_triqueue3.py:379-381 with the rows of
        labeled_matching_layer_queue.py:17-20. Must run before OIM updates its table with this batch."""
        feats = F.normalize(embeds.float(), dim=1)
        if not self.triplet_with_lut:
            return self.triplet(feats, pids, normalize=False)
        labeled = pids >= 0
        rows = self.oim.lookup_table[pids[labeled]].detach()
        return self.triplet(torch.cat([feats, rows]), torch.cat([pids, pids[labeled]]), normalize=False)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(self, images: ImageList, features: Dict[str, torch.Tensor]) -> List[Instances]:
        """Boxes (input scale) with ``scores`` = sigmoid(cls) * sigmoid(centerness) and the
        L2-normalised embedding of the location that predicted each box."""
        maps = self.dense_features(features)
        logits, dists, ctrs = self.head(maps)
        points = torch.cat(level_points([m.shape[-2:] for m in maps], self.strides, device=maps[0].device))
        logits = self._flatten(logits).squeeze(2).sigmoid()
        ctrs = self._flatten(ctrs).squeeze(2).sigmoid()
        dists = self._flatten(dists)
        embeds = self._flatten(maps)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            keep = torch.nonzero(logits[i] > self.score_thresh).squeeze(1)
            scores = logits[i, keep] * ctrs[i, keep]
            count = keep.shape[0]
            if not isinstance(count, int):
                # torch.export: the candidate count is symbolic (it varies with the image), so k is computed from it
                scores, order = scores.topk(torch.sym_min(count, self.pre_nms_topk))
                keep = keep[order]
            elif count > self.pre_nms_topk:
                scores, order = scores.topk(self.pre_nms_topk)
                keep = keep[order]
            boxes = boxes_of(distances_to_boxes(points[keep], dists[i, keep]))
            clip_boxes(boxes, image_size)
            kept = nms(boxes.tensor, scores, self.nms_thresh)[: self.max_detections]
            results.append(instances_of(
                image_size, pred_boxes=boxes_of(boxes.tensor[kept]), scores=scores[kept],
                pred_classes=torch.zeros_like(kept), embeddings=F.normalize(embeds[i, keep[kept]], dim=1),
            ))
        return results

    @torch.no_grad()
    def embed(self, images: ImageList, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> List[torch.Tensor]:
        """Embeddings of given boxes read from the dense map.

        ``center`` (default): the location nearest the box centre on the level whose size
        range owns the box (half its longer side), i.e. where training puts the box's
        positives. ``roi_average``: RoIAlign-average of the finest (P3) map over the box.
        """
        maps = self.dense_features(features)
        out = []
        for i, b in enumerate(boxes):
            t = b.tensor.to(maps[0].device)
            if guard_or_false(t.shape[0] == 0):  # an exported count may be 0 or not: the general path runs
                out.append(maps[0].new_zeros((0, maps[0].shape[1])))
                continue
            if self.embed_pooling == "roi_average":
                rois = torch.cat([t.new_full((t.shape[0], 1), float(i)), t], dim=1)
                pooled = roi_align(maps[0], rois, (7, 7), spatial_scale=1.0 / self.strides[0], aligned=True)
                out.append(F.normalize(pooled.mean(dim=(2, 3)), dim=1))
                continue
            out.append(F.normalize(self._center_embeddings(maps, i, t), dim=1))
        return out

    def _center_embeddings(self, maps: List[torch.Tensor], image_index: int, boxes: torch.Tensor) -> torch.Tensor:
        """Per box, the feature at its centre's location on its level, in tensor ops only (no
        Python ints from tensors), so a traced (exported) query embedder follows its input boxes."""
        half = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
        level = torch.zeros_like(half, dtype=torch.long)
        for lvl in range(len(self.size_ranges) - 1, -1, -1):
            lo, hi = self.size_ranges[lvl]
            level = torch.where((half >= lo) & (half <= hi), lvl, level)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        out = None
        for lvl, (m, s) in enumerate(zip(maps, self.strides)):
            m = m[image_index]
            height, width = m.shape[1], m.shape[2]
            col = torch.round((cx - s // 2) / s).clamp(min=0).long().clamp(max=width - 1)
            row = torch.round((cy - s // 2) / s).clamp(min=0).long().clamp(max=height - 1)
            picked = m.flatten(1).index_select(1, row * width + col).t()
            out = picked if out is None else torch.where((level == lvl)[:, None], picked, out)
        return out
