"""``PersonSearch``: one shared backbone feeding one or more person-search branches.

Training returns the branches' losses merged into ONE flat dict with one key per
task (a key that two branches both produce is an error, never a silent sum), so
loss weighting (GALW) sees every task apart. Inference follows the model eval
contract: per input, ``instances`` in original image coordinates with
``pred_boxes``, ``scores`` and ``embeddings`` (unit norm, or norm = score with NAE's
score weighting, MODEL.NAE.SCORE_WEIGHTED_EMBEDDINGS); query inputs (with
``query_instances``) also get ``query_embedding``, the embedding of the given box.
With a detector and an embedder apart (ROI-AlignPS*), TEST.PERSON_SEARCH.EMBEDDING picks
the embedder's embedding, the detector's own, or both concatenated, the three the
ROI-AlignPS reference scores (tools/test_results_psd.py, tools/test_results_psd_prw.py).
A branch with a ``predict_attributes(images, features, boxes)`` method (the attribute
branch) adds ``attribute_probs`` [N, A] to the detections.
"""
import logging
import math
import os
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from ..checkpoint import WEIGHTING_PREFIX, log_skipped_weighting
from .backbone import load_imagenet_weights
from .branch import PersonSearchBranch, build_branch
from .exportable import pad_image

__all__ = ["PersonSearch", "EMBEDDINGS"]

logger = logging.getLogger(__name__)

#: TEST.PERSON_SEARCH.EMBEDDING's choices (galw/config.py).
EMBEDDINGS = ("embedder", "detector", "concat")


def _skip_weighting_state(module, state_dict, prefix, *args):
    """A training checkpoint's ``galw_weighting.*`` keys, loaded into a model built for inference
    (which has no loss weighting: detectron2's DefaultPredictor, say), are dropped with the line
    that says why, not listed among "keys not used by the model"."""
    if hasattr(module, WEIGHTING_PREFIX.rstrip(".")):
        return
    keys = [k for k in state_dict if k.startswith(prefix + WEIGHTING_PREFIX)]
    for k in keys:
        del state_dict[k]
    if keys:
        log_skipped_weighting(logger, [k[len(prefix):] for k in keys])


@META_ARCH_REGISTRY.register()
class PersonSearch(nn.Module):
    """Shared trunk (stem..res4) + branches from ``MODEL.PERSON_SEARCH.BRANCHES``."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        branches: Dict[str, PersonSearchBranch],
        detector: str,
        embedder: str,
        pixel_mean,
        pixel_std,
        size_divisibility: int = 32,
        input_format: str = "BGR",
        pretrained: str = "",
        stride_in_1x1: bool = True,
        embedding: str = "embedder",
    ):
        """``pretrained``: ImageNet ResNet checkpoint copied into the trunk and every branch's
        ``res5`` once the model is built (see ``galw.modeling.backbone``); "" = random init.
        ``embedding``: one of EMBEDDINGS (TEST.PERSON_SEARCH.EMBEDDING)."""
        super().__init__()
        for role, name in (("DETECTOR", detector), ("EMBEDDER", embedder)):
            if name not in branches:
                raise ValueError(
                    f"MODEL.PERSON_SEARCH.{role} = {name!r} is not among MODEL.PERSON_SEARCH.BRANCHES {list(branches)}"
                )
        if embedding not in EMBEDDINGS:
            raise ValueError(f"TEST.PERSON_SEARCH.EMBEDDING = {embedding!r}; expected one of {EMBEDDINGS}")
        if embedding == "concat" and detector == embedder:
            raise ValueError(
                f"TEST.PERSON_SEARCH.EMBEDDING = 'concat' needs MODEL.PERSON_SEARCH.DETECTOR and EMBEDDER apart; "
                f"both are {detector!r}"
            )
        self.backbone = backbone
        self.branches = nn.ModuleDict(branches)
        self.detector = detector
        self.embedder = embedder
        self.embedding = embedding
        logger.info("Person search embeds with %s (TEST.PERSON_SEARCH.EMBEDDING = %s)",
                    self.embedding_description, embedding)
        self.size_divisibility = size_divisibility
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if pretrained:
            load_imagenet_weights(self, pretrained, stride_in_1x1=stride_in_1x1, input_format=input_format)
        self.register_load_state_dict_pre_hook(_skip_weighting_state)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        names = list(cfg.MODEL.PERSON_SEARCH.BRANCHES)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"MODEL.PERSON_SEARCH.BRANCHES must name distinct branches; got {names}")
        branches = {name: build_branch(name, cfg, backbone.output_shape()) for name in names}
        pretrained = cfg.MODEL.PERSON_SEARCH.PRETRAINED
        if pretrained and not os.path.isfile(pretrained) and cfg.MODEL.WEIGHTS:
            # Deployment: the weights loaded next replace the ImageNet init, which need not be there.
            logger.info("MODEL.PERSON_SEARCH.PRETRAINED %s absent: not loaded, MODEL.WEIGHTS %s follows",
                        pretrained, cfg.MODEL.WEIGHTS)
            pretrained = ""
        return {
            "backbone": backbone,
            "branches": branches,
            "detector": cfg.MODEL.PERSON_SEARCH.DETECTOR,
            "embedder": cfg.MODEL.PERSON_SEARCH.EMBEDDER,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": max(cfg.MODEL.PERSON_SEARCH.SIZE_DIVISIBILITY, backbone.size_divisibility),
            "input_format": cfg.INPUT.FORMAT,
            "pretrained": pretrained,
            "stride_in_1x1": cfg.MODEL.RESNETS.STRIDE_IN_1X1,
            "embedding": cfg.TEST.PERSON_SEARCH.EMBEDDING,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def embedding_description(self) -> str:
        """Which branch's embedding the search uses, in words."""
        if self.embedding == "concat":
            return f"{self.detector}'s and {self.embedder}'s embeddings, each unit-norm, concatenated / sqrt(2)"
        if self.embedding == "detector" or self.detector == self.embedder:
            return f"{self.detector}'s embedding of its detections"
        return f"{self.embedder}'s embedding of {self.detector}'s boxes"

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        """Normalise and pad the images (in ``INPUT.FORMAT`` channel order)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        if len(images) == 1:
            return pad_image(images[0], self.size_divisibility)  # sizes symbolic under torch.export
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            return self._losses(batched_inputs, images, features)
        return self._inference(batched_inputs, images, features)

    def _losses(self, batched_inputs, images, features) -> Dict[str, torch.Tensor]:
        unsized = [name for name, m in self.named_modules() if getattr(m, "awaiting_checkpoint_size", False)]
        if unsized:
            raise ValueError(
                f"cannot train: {unsized} have no size (the OIM identity count MODEL.OIM.NUM_LABELED or the number of "
                "attributes MODEL.ATTRIBUTE.NUM_ATTRIBUTES is 0, no train dataset gave it and no checkpoint was "
                "loaded); set the key or fix DATASETS.TRAIN"
            )
        gt_instances = []
        for i, x in enumerate(batched_inputs):
            inst = x.get("instances")
            if inst is None or not all(inst.has(f) for f in ("gt_boxes", "gt_classes", "gt_pids")):
                raise ValueError(
                    f"training input {i} ({x.get('file_name', 'no file_name')}): 'instances' with gt_boxes, "
                    "gt_classes and gt_pids are required (PersonSearchDatasetMapper in training mode)"
                )
            gt_instances.append(inst.to(self.device))
        losses, owner = {}, {}
        for name, branch in self.branches.items():
            for key, value in branch(images, features, gt_instances).items():
                if key in losses:
                    raise KeyError(
                        f"loss key {key!r} is produced by both {owner[key]} and {name}; every task needs its own key"
                    )
                losses[key], owner[key] = value, name
        return losses

    @torch.no_grad()
    def _inference(self, batched_inputs, images, features) -> List[dict]:
        query_boxes = [self._query_box(x, i) for i, x in enumerate(batched_inputs)]
        detector = self.branches[self.detector]
        embedder = self.branches[self.embedder]
        detections = detector.detect(images, features)
        if embedder is not detector and self.embedding != "detector":
            for inst, emb in zip(detections, embedder.embed(images, features, [d.pred_boxes for d in detections])):
                inst.embeddings = _concat(inst.embeddings, emb) if self.embedding == "concat" else emb
        for branch in self.branches.values():
            if hasattr(branch, "predict_attributes"):
                boxes = [d.pred_boxes for d in detections]
                for inst, probs in zip(detections, branch.predict_attributes(images, features, boxes)):
                    inst.attribute_probs = probs
        empty = Boxes(torch.zeros((0, 4), device=self.device))
        query_embeddings = None
        if any(b is not None for b in query_boxes):
            query_embeddings = self._embed_boxes(
                images, features, [b if b is not None else empty for b in query_boxes]
            )
        oracle_boxes = [x["oracle_instances"].gt_boxes.to(self.device) if "oracle_instances" in x else None
                        for x in batched_inputs]
        oracle_embeddings = None
        if any(b is not None for b in oracle_boxes):  # the evaluation's GT-box oracle
            oracle_embeddings = self._embed_boxes(
                images, features, [b if b is not None else empty for b in oracle_boxes]
            )
        outputs = []
        for i, (x, inst, image_size) in enumerate(zip(batched_inputs, detections, images.image_sizes)):
            height, width = x.get("height", image_size[0]), x.get("width", image_size[1])
            out = {"instances": detector_postprocess(inst, height, width)}
            if query_boxes[i] is not None:
                out["query_embedding"] = query_embeddings[i][0]
            if oracle_boxes[i] is not None:
                out["oracle_embeddings"] = oracle_embeddings[i]
            outputs.append(out)
        return outputs

    def _embed_boxes(self, images, features, boxes: List[Boxes]) -> List[torch.Tensor]:
        """Per image, the TEST.PERSON_SEARCH.EMBEDDING embedding of the given boxes."""
        detector = self.branches[self.detector]
        embedder = self.branches[self.embedder]
        if self.embedding == "detector":
            return detector.embed(images, features, boxes)
        if self.embedding == "embedder":
            return embedder.embed(images, features, boxes)
        return [_concat(a, b) for a, b in zip(detector.embed(images, features, boxes),
                                              embedder.embed(images, features, boxes))]

    def _query_box(self, x: dict, index: int):
        """The single query box of a query input (input scale), or None for a gallery input."""
        query = x.get("query_instances")
        if query is None:
            return None
        if not isinstance(query, Instances) or not query.has("gt_boxes") or len(query) != 1:
            raise ValueError(
                f"query input {index} ({x.get('file_name', 'no file_name')}): 'query_instances' must be "
                f"Instances holding exactly one gt_boxes entry; got {query!r}"
            )
        return query.gt_boxes.to(self.device)


def _concat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a/|a|, b/|b|] / sqrt(2): each part normalised as the reference's scripts do before
    concatenating (test_results_psd_prw.py:151,156,161), the result unit-norm as its CUHK-SYSU
    script makes it (test_results_psd.py:99,139,158), so similarities are the mean of the two."""
    return torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)], dim=1) / math.sqrt(2.0)
