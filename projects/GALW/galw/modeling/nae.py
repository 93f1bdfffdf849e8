"""The NAE branch: Norm-Aware Embedding person search (Chen et al., CVPR 2020) on res4.

A detectron2 RPN proposes boxes on the shared res4 map; the ROI head ROI-aligns res4
(14x14), runs the branch's OWN res5 and max-pools both maps. A 256-d embedding is
projected from the two pooled vectors; its NORM, rescaled by a 1-d BatchNorm, is the
person/background logit (BCE) and its ANGLE is the identity (OIM on the normalised
embedding). Boxes are refined from the pooled res5 vector (L1, weight 10 as in the
ROI-AlignPS reference). Five tasks, five loss keys:
``loss_rpn_cls`` (t1), ``loss_rpn_box`` (t2), ``loss_nae_box`` (t3), ``loss_nae_det`` (t4),
``loss_nae_oim`` (t5), the order of galw/modeling/tasks.py.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import guard_or_false

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import ROIHeads
from detectron2.structures import Boxes, ImageList, Instances

from ..metadata import current_metadata
from .backbone import build_res5_stage, res5_out_channels
from .branch import PS_BRANCH_REGISTRY, PersonSearchBranch
from .exportable import pool_boxes
from .oim import IGNORED, OIMLoss
from .small_map_conv import use_small_map_convs

__all__ = ["NAEBranch", "NormAwareEmbedding", "NormAwareROIHeads", "oim_num_labeled"]

logger = logging.getLogger(__name__)


def _train_num_pids(name):
    """(``num_pids`` of a train set current for its root, None) or, when it cannot be loaded (e.g.
    absent on a deployment machine: the checkpoint then sizes the table; training builds the train
    loader next, which raises the load's error), (None, the load error). Metadata left by an
    earlier load, of another root perhaps, is not used."""
    try:
        return current_metadata(name).get("num_pids"), None
    except (FileNotFoundError, OSError, ValueError) as e:
        logger.warning("Could not load %s to read its num_pids: %s", name, e)
        return None, e


def oim_num_labeled(cfg) -> Optional[int]:
    """Size of the OIM lookup table: the train set's ``num_pids`` metadata, else MODEL.OIM.NUM_LABELED;
    None when neither says it (no train data: inference), and the table is sized by the checkpoint."""
    configured = cfg.MODEL.OIM.NUM_LABELED
    if configured > 0:
        loaded = [MetadataCatalog.get(name).get("num_pids") for name in cfg.DATASETS.TRAIN]
        if len(loaded) == 1 and loaded[0] is not None and loaded[0] != configured:
            raise ValueError(
                f"MODEL.OIM.NUM_LABELED={configured} but the train dataset {cfg.DATASETS.TRAIN[0]!r} has "
                f"num_pids={loaded[0]}; set it to 0 (use the metadata) or to {loaded[0]}"
            )
        return configured
    looked_up = [_train_num_pids(name) for name in cfg.DATASETS.TRAIN]
    from_metadata, errors = [n for n, _ in looked_up], [e for _, e in looked_up]
    known = [n for n in from_metadata if n is not None]
    if len(known) > 1:
        raise ValueError(
            f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} are several datasets with num_pids {from_metadata}: "
            "their identity labels would overlap; set MODEL.OIM.NUM_LABELED to the size of a joint labelling"
        )
    if known:
        return int(known[0])
    failed = [f"{name}: {e}" for name, e in zip(cfg.DATASETS.TRAIN, errors) if e is not None]
    logger.info(
        "OIM lookup-table size: MODEL.OIM.NUM_LABELED is 0 and no train dataset in %s has 'num_pids'%s; "
        "the checkpoint loaded gives it (inference); training needs one of them",
        list(cfg.DATASETS.TRAIN), f" (load failed: {'; '.join(failed)})" if failed else "",
    )
    return None


class NormAwareEmbedding(nn.Module):
    """Embedding from pooled feature vectors whose norm is a person logit, angle an identity.

    Each input vector is projected (Linear + BatchNorm1d) to a slice of the embedding;
    the slices are concatenated, the norm is taken out and rescaled by a 1-d BatchNorm
    (so it can cross 0 as a logit), and the rest is the unit-norm embedding.
    """

    def __init__(self, in_channels: Sequence[int], dim: int):
        super().__init__()
        parts = len(in_channels)
        dims = [dim // parts] * parts
        dims[-1] += dim - sum(dims)
        self.projectors = nn.ModuleList()
        for c, d in zip(in_channels, dims):
            proj = nn.Sequential(nn.Linear(c, d), nn.BatchNorm1d(d))
            nn.init.normal_(proj[0].weight, std=0.01)
            nn.init.normal_(proj[1].weight, std=0.01)
            nn.init.zeros_(proj[0].bias)
            nn.init.zeros_(proj[1].bias)
            self.projectors.append(proj)
        self.rescaler = nn.BatchNorm1d(1)

    def forward(self, vectors: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``vectors``: one [R, C_i] tensor per input. Returns (embeddings [R, D] unit norm, logits [R])."""
        emb = torch.cat([proj(v) for proj, v in zip(self.projectors, vectors)], dim=1)
        norms = emb.norm(dim=1, keepdim=True)
        embeddings = emb / norms.clamp(min=1e-12)
        return embeddings, self.rescaler(norms).squeeze(1)


class NormAwareROIHeads(ROIHeads):
    """res5 ROI head with the norm-aware embedding, box refinement and OIM.

    Sampling and matching are detectron2's ``ROIHeads`` (gt boxes appended to the
    proposals); the sampled proposals carry ``gt_pids`` of their matched box, and
    background proposals get pid -2 so OIM ignores them.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        pooler: ROIPooler,
        res5: nn.Module,
        embedding: NormAwareEmbedding,
        box_predictor: nn.Module,
        box2box_transform: Box2BoxTransform,
        box_reg_loss_weight: float,
        oim: OIMLoss,
        test_score_thresh: float,
        test_nms_thresh: float,
        test_topk_per_image: int,
        score_weighted_embeddings: bool = True,
        smooth_l1_beta: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.num_classes != 1:
            raise ValueError(f"NAE detects one class (person): MODEL.ROI_HEADS.NUM_CLASSES must be 1, got {self.num_classes}")
        self.in_features = in_features
        self.pooler = pooler
        self.res5 = res5
        self.embedding = embedding
        self.box_predictor = box_predictor
        self.box2box_transform = box2box_transform
        self.box_reg_loss_weight = box_reg_loss_weight
        self.oim = oim
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.score_weighted_embeddings = score_weighted_embeddings
        self.smooth_l1_beta = smooth_l1_beta

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg)
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1:
            raise ValueError(f"NAE pools one map (res4): MODEL.ROI_HEADS.IN_FEATURES must have one entry, got {in_features}")
        in_shape = input_shape[in_features[0]]
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        res5_channels = res5_out_channels(cfg)
        dim = cfg.MODEL.NAE.EMBEDDING_DIM
        box_predictor = nn.Sequential(nn.Linear(res5_channels, 4), nn.BatchNorm1d(4))
        # Both weights small (the references): a BatchNorm weight of 1 would start the deltas at std ~1.
        for layer in box_predictor:
            nn.init.normal_(layer.weight, std=cfg.MODEL.NAE.BOX_PREDICTOR_INIT_STD)
            nn.init.zeros_(layer.bias)
        ret.update(
            in_features=in_features,
            pooler=ROIPooler(
                output_size=resolution,
                scales=(1.0 / in_shape.stride,),
                sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            ),
            res5=use_small_map_convs(build_res5_stage(cfg, first_stride=2), cfg.MODEL.NAE.RES5_CONV_IMPL),
            embedding=NormAwareEmbedding((in_shape.channels, res5_channels), dim),
            box_predictor=box_predictor,
            box2box_transform=Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            box_reg_loss_weight=cfg.MODEL.NAE.BOX_REG_LOSS_WEIGHT,
            oim=OIMLoss(
                feat_dim=dim,
                num_labeled=oim_num_labeled(cfg),
                queue_size=cfg.MODEL.OIM.QUEUE_SIZE,
                momentum=cfg.MODEL.OIM.MOMENTUM,
                temperature=cfg.MODEL.OIM.TEMPERATURE,
            ),
            test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            score_weighted_embeddings=cfg.MODEL.NAE.SCORE_WEIGHTED_EMBEDDINGS,
            # detectron2's key: 0 = L1 (ROI-AlignPS), 1 = torch's smooth L1 default (NAE4PS)
            smooth_l1_beta=cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA,
        )
        return ret

    def _heads(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]):
        """Embeddings, person logits and box deltas of ``boxes`` (concatenated over images)."""
        pooled, extra = pool_boxes(self.pooler, [features[f] for f in self.in_features], boxes)
        res5 = self.res5(pooled)
        vec4 = pooled.amax(dim=(2, 3))
        vec5 = res5.amax(dim=(2, 3))
        embeddings, logits = self.embedding([vec4, vec5])
        out = embeddings, logits, self.box_predictor(vec5)
        return tuple(t[: t.shape[0] - extra] for t in out) if extra else out

    def losses(self, features, proposals: List[Instances], targets: List[Instances]) -> Dict[str, torch.Tensor]:
        proposals = self.label_and_sample_proposals(proposals, targets)
        embeddings, logits, deltas = self._heads(features, [p.proposal_boxes for p in proposals])
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
        pids = torch.cat(
            [
                p.gt_pids if p.has("gt_pids") else torch.full_like(p.gt_classes, IGNORED)
                for p in proposals
            ]
        )
        pids = torch.where(foreground, pids, torch.full_like(pids, IGNORED))
        loss_det = F.binary_cross_entropy_with_logits(logits, foreground.to(logits.dtype))
        if foreground.any():
            proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
            gt_boxes = _gt_boxes_or_dummy(proposals)
            targets_delta = self.box2box_transform.get_deltas(proposal_boxes[foreground], gt_boxes[foreground])
            # (smooth) L1 summed over foreground, averaged over all sampled proposals (as detectron2/mmdet)
            loss_box = F.smooth_l1_loss(deltas[foreground], targets_delta, reduction="sum", beta=self.smooth_l1_beta)
            loss_box = loss_box / gt_classes.numel()
        else:
            loss_box = deltas.sum() * 0.0
        return {
            "loss_nae_det": loss_det,
            "loss_nae_box": loss_box * self.box_reg_loss_weight,
            "loss_nae_oim": self.oim(embeddings, pids),
        }

    def inference(self, features, proposals: List[Instances]) -> List[Instances]:
        boxes = [p.proposal_boxes for p in proposals]
        counts = [len(b) for b in boxes]
        embeddings, logits, deltas = self._heads(features, boxes)
        refined = self.box2box_transform.apply_deltas(deltas, torch.cat([b.tensor for b in boxes]))
        results = []
        for image_size, emb, score, box in zip(
            (p.image_size for p in proposals),
            _per_image(embeddings, counts),
            _per_image(logits.sigmoid(), counts),
            _per_image(refined, counts),
        ):
            box = Boxes(box)
            box.clip(image_size)
            idx = ((score > self.test_score_thresh) & box.nonempty()).nonzero().squeeze(1)
            kept = batched_nms(box.tensor[idx], score[idx], torch.zeros_like(idx), self.test_nms_thresh)
            idx = idx[kept[: self.test_topk_per_image]]
            inst = Instances(image_size)
            inst.pred_boxes = box[idx]
            inst.scores = score[idx]
            inst.pred_classes = torch.zeros_like(idx)
            # Confidence-weighted similarity (NAE4PS, SeqNet): a gallery box's similarity is score * cosine.
            inst.embeddings = emb[idx] * score[idx, None] if self.score_weighted_embeddings else emb[idx]
            results.append(inst)
        return results

    def embed_boxes(self, features, boxes: List[Boxes]) -> List[torch.Tensor]:
        """Unit-norm embeddings of given boxes (query boxes, another branch's detections)."""
        counts = [b.tensor.shape[0] for b in boxes]  # len() would fix a symbolic (exported) count
        if guard_or_false(sum(counts) == 0):  # an exported detection count may be 0 or not: the heads run
            ref = features[self.in_features[0]]
            return [ref.new_zeros((0, self.oim.feat_dim)) for _ in boxes]
        embeddings, _, _ = self._heads(features, boxes)
        return _per_image(embeddings, counts)


def _per_image(rows: torch.Tensor, counts: List[int]) -> List[torch.Tensor]:
    """``rows`` split by image. One image is not split: traced (exported), a split would fix the
    row count at the trace image's (``len`` of a box list is a Python int), and fail on any other."""
    return [rows] if len(counts) == 1 else list(rows.split(counts))


def _gt_boxes_or_dummy(proposals: List[Instances]) -> torch.Tensor:
    """gt_boxes of the sampled proposals; images without any gt contribute zeros (all background)."""
    return torch.cat(
        [
            p.gt_boxes.tensor if p.has("gt_boxes") else p.proposal_boxes.tensor.new_zeros((len(p), 4))
            for p in proposals
        ]
    )


@PS_BRANCH_REGISTRY.register()
class NAEBranch(PersonSearchBranch):
    """RPN on res4 + the norm-aware res5 ROI head; detects and embeds."""

    @configurable
    def __init__(self, *, rpn: RPN, roi_heads: NormAwareROIHeads):
        super().__init__()
        self.rpn = rpn
        self.roi_heads = roi_heads

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        for key in ("RPN", "ROI_HEADS"):
            wanted = list(cfg.MODEL[key].IN_FEATURES)
            absent = [f for f in wanted if f not in input_shape]
            if absent:
                raise ValueError(
                    f"MODEL.{key}.IN_FEATURES {wanted}: {absent} not among the shared backbone outputs "
                    f"{sorted(input_shape)} (MODEL.RESNETS.OUT_FEATURES)"
                )
        return {"rpn": RPN(cfg, input_shape), "roi_heads": NormAwareROIHeads(cfg, input_shape)}

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Dict[str, torch.Tensor]:
        proposals, rpn_losses = self.rpn(images, features, gt_instances)
        losses = {
            "loss_rpn_cls": rpn_losses["loss_rpn_cls"],
            "loss_rpn_box": rpn_losses["loss_rpn_loc"],
        }
        losses.update(self.roi_heads.losses(features, proposals, gt_instances))
        return losses

    def detect(self, images: ImageList, features: Dict[str, torch.Tensor]) -> List[Instances]:
        proposals, _ = self.rpn(images, features, None)
        return self.roi_heads.inference(features, proposals)

    def embed(self, images: ImageList, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> List[torch.Tensor]:
        return self.roi_heads.embed_boxes(features, boxes)
