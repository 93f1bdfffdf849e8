"""The contract between the person-search meta-architecture and its branches.

A branch (NAE, AlignPS, attributes, ...) consumes the shared backbone's feature
maps and owns everything after them. The meta-architecture builds the branches
named in ``cfg.MODEL.PERSON_SEARCH.BRANCHES`` from this registry, sums nothing:
it merges their loss dicts, whose keys are unique per task, so that loss weighting
(GALW) sees every task apart.
"""
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.registry import Registry

PS_BRANCH_REGISTRY = Registry("PS_BRANCH")
PS_BRANCH_REGISTRY.__doc__ = """
Registry for person-search branches: ``cls(cfg, input_shape: Dict[str, ShapeSpec])``.
"""


class PersonSearchBranch(nn.Module):
    """Interface every branch implements (images and boxes in the network's input scale).

    * ``forward(images, features, gt_instances)`` in training returns a dict of losses
      with one stable key per task; ``gt_instances`` carry ``gt_boxes``, ``gt_classes``,
      ``gt_pids`` (-1 = unlabeled) and, when the dataset has them, ``gt_attributes``.
    * ``detect(images, features)`` in eval returns one Instances per image with
      ``pred_boxes``, ``scores`` and, if the branch embeds, ``embeddings`` (L2-normalised).
    * ``embed(images, features, boxes)`` returns, per image, the L2-normalised
      embeddings of the given boxes (the query box, or another branch's detections).
    A branch that cannot detect or embed raises NotImplementedError from that method.
    """

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def detect(self, images: ImageList, features: Dict[str, torch.Tensor]) -> List[Instances]:
        raise NotImplementedError(f"{type(self).__name__} does not detect")

    def embed(
        self, images: ImageList, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> List[torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not embed boxes")


def build_branch(name: str, cfg, input_shape: Dict[str, ShapeSpec]) -> PersonSearchBranch:
    """Build the branch registered under ``name``."""
    return PS_BRANCH_REGISTRY.get(name)(cfg, input_shape)
