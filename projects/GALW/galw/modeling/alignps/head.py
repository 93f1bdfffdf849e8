"""The FCOS-style dense head of AlignPS: classification, box distances, centerness."""
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, get_norm

from .afa import DeformConvWithOffsets

__all__ = ["DenseHead"]


#: Initial box distance (in units of the level's stride) of every location: a deviation from FCOS's 0.
BOX_INIT_STRIDES = 2.0


class Scale(nn.Module):
    """A learnable scalar per level (FCOS): lets one shared head regress several strides."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return x * self.scale


class DenseHead(nn.Module):
    """Shared conv towers over the levels; per location a person logit, 4 distances, a centerness logit.

    Box distances are predicted in units of the level's stride (``relu(scale * x)``, FCOS's
    ``norm_reg_targets``) and returned in pixels; centerness is predicted from the box
    tower (``centerness_on_reg``), as the AlignPS reference does. With ``dcn_on_last_conv`` the
    last conv of each tower is a modulated deformable conv (DCNv2, offsets starting at zero) followed
    by the tower's norm, as the reference's ``dcn_on_last_conv=True``; ``deform_impl`` picks its kernel.
    ``strides`` names every level trained on, negative-only ones included (one ``Scale`` each, as the
    reference's one Scale per level).
    """

    def __init__(
        self,
        in_channels: int,
        num_convs: int,
        norm: str,
        strides: List[int],
        prior_prob: float,
        dcn_on_last_conv: bool = False,
        deform_impl: str = "auto",
    ):
        super().__init__()
        self.strides = list(strides)

        def tower():
            layers = []
            for i in range(num_convs):
                if dcn_on_last_conv and i == num_convs - 1:
                    dcn = DeformConvWithOffsets(in_channels, in_channels, modulated=True, bias=not norm,
                                                impl=deform_impl)
                    layers += [dcn, get_norm(norm, in_channels) or nn.Identity(), nn.ReLU()]
                    continue
                layers += [
                    Conv2d(in_channels, in_channels, 3, padding=1, bias=not norm, norm=get_norm(norm, in_channels)),
                    nn.ReLU(),
                ]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.box_tower = tower()
        self.cls_logits = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in self.strides)
        offset_convs = {id(m.offset) for m in self.modules() if isinstance(m, DeformConvWithOffsets)}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in offset_convs:  # offsets keep their zero init
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        # Distances start at BOX_INIT_STRIDES strides, not relu(~0): near-empty boxes give GIoU
        # almost no gradient, and the box loss stayed at ~1.0 for 100+ CPU iterations.
        nn.init.constant_(self.box_pred.bias, BOX_INIT_STRIDES)

    def forward(self, feats: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Per level: logits [N,1,H,W], pixel distances [N,4,H,W], centerness logits [N,1,H,W].

        Training takes every level of ``strides``; eval also a finest-first prefix of them, since the
        negative-only levels (MODEL.ALIGNPS.NEGATIVE_LEVELS) exist in training only."""
        if len(feats) > len(self.strides) or not feats or (self.training and len(feats) != len(self.strides)):
            raise ValueError(
                f"DenseHead built for {len(self.strides)} levels (training: all of them, eval: a finest-first "
                f"prefix); got {len(feats)} maps in {'training' if self.training else 'eval'}"
            )
        logits, dists, ctrs = [], [], []
        for x, scale, stride in zip(feats, self.scales, self.strides):
            c = self.cls_tower(x)
            b = self.box_tower(x)
            logits.append(self.cls_logits(c))
            dists.append(F.relu(scale(self.box_pred(b))) * stride)
            ctrs.append(self.centerness(b))
        return logits, dists, ctrs
