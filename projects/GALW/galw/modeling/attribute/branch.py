"""The attribute branch (task t11 of ROI-AlignPS*-Attr, paper Sec. 4.2).

Every person box is cropped with ROIAlign to ``POOLER_RESOLUTION`` x
``POOLER_RESOLUTION`` (32 x 32 in the paper) from each of the shared backbone
levels in ``IN_FEATURES``. The crops form a small feature pyramid fused top-down
as in Tang et al. (ICCV 2019): each level gets a 1x1 lateral conv to ``CONV_DIM``
channels (linear, no ReLU, as their code) and is concatenated with the fused level above
it, so a shallow level sees its own detail and the semantics of every deeper level. Each
level has its ALMs (one per attribute); a main classifier on the average-pooled deepest
crop (the backbone feature itself, as their ``finalfc``) completes the prediction set.
Training: the sum over these predictions of the binary
cross-entropy on known labels (deep supervision, as Tang et al.), under one loss key,
``loss_attr``. Inference: per attribute the maximum logit over the predictions,
through a sigmoid.

Boxes: the ground-truth boxes in training; at inference whatever boxes the
meta-architecture passes to :meth:`AttributeBranch.predict_attributes` (the
detector branch's detections), all in the network's input scale.
"""
import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from ...metadata import current_metadata
from ..branch import PS_BRANCH_REGISTRY, PersonSearchBranch
from .alm import AttributeLocalization
from .loss import UNKNOWN, check_attribute_targets, masked_attribute_bce

__all__ = ["AttributeBranch"]

logger = logging.getLogger(__name__)


def _num_attributes_from_config(cfg) -> Optional[int]:
    """MODEL.ATTRIBUTE.NUM_ATTRIBUTES, or (when 0) the length of the train set's ``attribute_names``;
    None when there is no train set to read (inference: the checkpoint gives the number).

    The data part sets ``attribute_names`` when it loads a split whose root holds an
    ``attributes.json``; the model is built before the loader, so the split is loaded here.
    """
    num = cfg.MODEL.ATTRIBUTE.NUM_ATTRIBUTES
    if num > 0:
        return num
    if num < 0:
        raise ValueError(f"MODEL.ATTRIBUTE.NUM_ATTRIBUTES must be >= 0 (0 = from the train metadata), got {num}")
    if not cfg.DATASETS.TRAIN:
        logger.info("MODEL.ATTRIBUTE.NUM_ATTRIBUTES is 0 and DATASETS.TRAIN is empty: the checkpoint gives it")
        return None
    name = cfg.DATASETS.TRAIN[0]
    try:
        names = current_metadata(name).get("attribute_names", None)
    except (FileNotFoundError, OSError) as e:
        logger.info("MODEL.ATTRIBUTE.NUM_ATTRIBUTES is 0 and %s cannot be loaded (%s): the checkpoint gives it", name, e)
        return None
    if not names:
        raise ValueError(
            f"MODEL.ATTRIBUTE.NUM_ATTRIBUTES is 0 but the metadata of {name!r} has no 'attribute_names': "
            f"set NUM_ATTRIBUTES, or put an attribute labels file (attributes.json) in the dataset root"
        )
    return len(names)


@PS_BRANCH_REGISTRY.register()
class AttributeBranch(PersonSearchBranch):
    """Pedestrian attribute recognition on person boxes with a pyramid of ALMs.

    Neither detects nor embeds: the meta-architecture calls
    :meth:`predict_attributes` on the detector's boxes and stores the result as
    ``attribute_probs`` on its output instances.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_features: List[str],
        num_attributes: Optional[int],
        pooler_resolution: int = 32,
        conv_dim: int = 256,
        se_reduction: int = 16,
        pooling: str = "avg",
        padding_mode: str = "border",
        lateral_relu: bool = False,
    ):
        super().__init__()
        if not in_features:
            raise ValueError("MODEL.ATTRIBUTE.IN_FEATURES is empty: name at least one backbone level, e.g. ['res3','res4']")
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ATTRIBUTE.IN_FEATURES names {missing}, not among the backbone outputs {sorted(input_shape)}"
            )
        if num_attributes is not None and num_attributes <= 0:
            raise ValueError(f"AttributeBranch needs num_attributes > 0, got {num_attributes}")
        # Shallow (fine) to deep (coarse): the top-down fusion walks this order backwards.
        self.in_features = sorted(in_features, key=lambda f: input_shape[f].stride)
        self.num_attributes = num_attributes
        self.poolers = nn.ModuleList(
            ROIAlign((pooler_resolution, pooler_resolution), 1.0 / input_shape[f].stride, 0, aligned=True)
            for f in self.in_features
        )
        self.laterals = nn.ModuleList(nn.Conv2d(input_shape[f].channels, conv_dim, 1) for f in self.in_features)
        for conv in self.laterals:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.conv_dim, self.se_reduction = conv_dim, se_reduction
        self.pooling, self.padding_mode, self.lateral_relu = pooling, padding_mode, lateral_relu
        self.main_channels = input_shape[self.in_features[-1]].channels
        self.num_attributes = None
        if num_attributes is not None:
            self._build_classifiers(num_attributes)

    def _build_classifiers(self, num_attributes: int) -> None:
        """The ALMs of every level and the main classifier, for ``num_attributes`` attributes."""
        num_levels = len(self.in_features)
        self.num_attributes = num_attributes
        self.alms = nn.ModuleList(
            AttributeLocalization(
                self.conv_dim * (num_levels - i), num_attributes, self.se_reduction, self.pooling, self.padding_mode
            )
            for i in range(num_levels)
        )
        self.main_classifier = nn.Linear(self.main_channels, num_attributes)
        nn.init.normal_(self.main_classifier.weight, std=0.01)
        nn.init.zeros_(self.main_classifier.bias)

    @property
    def awaiting_checkpoint_size(self) -> bool:
        """True until the number of attributes is known (built without it, no checkpoint loaded yet)."""
        return self.num_attributes is None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "main_classifier.weight"
        if self.num_attributes is None and key in state_dict:
            # Built without the train set: the checkpoint's classifier gives the number of attributes.
            self._build_classifiers(int(state_dict[key].shape[0]))
            self.to(self.laterals[0].weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        att = cfg.MODEL.ATTRIBUTE
        return {
            "input_shape": input_shape,
            "in_features": list(att.IN_FEATURES),
            "num_attributes": _num_attributes_from_config(cfg),
            "pooler_resolution": att.POOLER_RESOLUTION,
            "conv_dim": att.CONV_DIM,
            "se_reduction": att.SE_REDUCTION,
            "pooling": att.POOLING,
            "padding_mode": att.PADDING_MODE,
            "lateral_relu": att.LATERAL_RELU,
        }

    def attribute_logits(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> List[torch.Tensor]:
        """Logits ``[R, A]`` of every prediction (main, then one per level), R = all boxes in order."""
        rois = convert_boxes_to_pooler_format(boxes)
        crops = [pool(features[f], rois) for f, pool in zip(self.in_features, self.poolers)]
        laterals = [conv(crop) for conv, crop in zip(self.laterals, crops)]
        if self.lateral_relu:
            laterals = [F.relu(lateral) for lateral in laterals]
        fused = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            fused.insert(0, torch.cat([fused[0], lateral], dim=1))
        logits = [self.main_classifier(crops[-1].mean(dim=(2, 3)))]
        logits.extend(alm(level)[0] for alm, level in zip(self.alms, fused))
        return logits

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Dict[str, torch.Tensor]:
        if gt_instances is None:
            raise ValueError("AttributeBranch.forward computes the training loss and needs gt_instances")
        for i, inst in enumerate(gt_instances):
            if not inst.has("gt_attributes"):
                raise ValueError(
                    f"AttributeBranch: training instances of image {i} have no 'gt_attributes'; the train set needs "
                    f"attributes (records' 'attributes', e.g. from an attributes.json in the dataset root)"
                )
        targets = torch.cat([inst.gt_attributes for inst in gt_instances], dim=0)
        check_attribute_targets(targets, self.num_attributes, "gt_instances.gt_attributes")
        if targets.shape[0] == 0:
            # No person box in the batch: a zero loss that still touches every parameter (DDP).
            return {"loss_attr": sum(p.sum() for p in self.parameters()) * 0.0}
        logits = self.attribute_logits(features, [inst.gt_boxes for inst in gt_instances])
        loss = sum(masked_attribute_bce(head, targets) for head in logits)
        self._log_accuracy(torch.stack(logits).amax(dim=0), targets)
        return {"loss_attr": loss}

    @torch.no_grad()
    def _log_accuracy(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        known = targets != UNKNOWN
        if bool(known.any()):
            correct = ((logits > 0).long() == targets)[known]
            get_event_storage().put_scalar("attr/accuracy", correct.float().mean().item())

    @torch.no_grad()
    def predict_attributes(
        self, images: ImageList, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> List[torch.Tensor]:
        """Per image, the attribute probabilities ``[N_i, A]`` in [0, 1] of its boxes (input scale)."""
        if self.num_attributes is None:
            raise ValueError(
                "AttributeBranch: the number of attributes is unknown (MODEL.ATTRIBUTE.NUM_ATTRIBUTES 0, no train "
                "set read and no checkpoint loaded): load the weights first, or set NUM_ATTRIBUTES"
            )
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            device = next(self.parameters()).device
            return [torch.zeros(0, self.num_attributes, device=device) for _ in counts]
        logits = torch.stack(self.attribute_logits(features, boxes)).amax(dim=0)
        return list(torch.sigmoid(logits).split(counts))

    def detect(self, images: ImageList, features: Dict[str, torch.Tensor]) -> List[Instances]:
        raise NotImplementedError("AttributeBranch does not detect: use predict_attributes on another branch's boxes")

    def embed(self, images: ImageList, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> List[torch.Tensor]:
        raise NotImplementedError("AttributeBranch does not embed: use predict_attributes on another branch's boxes")
