"""AFA: the aligned feature aggregation neck of AlignPS (an FPN with deformable laterals).

AlignPS replaces the FPN's 1x1 laterals and 3x3 output convs with 3x3 deformable
convolutions so that features are sampled where the person is rather than on a
fixed grid, and it merges coarser levels into finer ones by CONCATENATION (not sum)
before the output conv. The finest output (P3, stride 8) is the map used for both
detection and re-id in the paper ("scale alignment").
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..deform_conv import DeformConv2d

__all__ = ["DeformConvWithOffsets", "AFAFPN", "OFFSET_INITS"]


OFFSET_INITS = ("xavier", "zero")


class DeformConvWithOffsets(nn.Module):
    """A deformable conv whose sampling offsets (and, modulated, masks) are predicted from its input.

    ``offset_init`` "zero" starts the layer as a plain conv (and, modulated, with every mask at
    sigmoid(0) = 0.5, as mmcv's DCNv2); "xavier" initialises the offset conv uniformly, as the
    AlignPS reference neck re-initialises every ``nn.Conv2d`` (offset convs included).
    ``modulated`` adds DCNv2's per-sample mask. ``impl`` picks the kernel (``galw.modeling.deform_conv``:
    torchvision's semantics, no compiled detectron2 op; see ``DEFORM_CONV_IMPLS``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        offset_init: str = "zero",
        modulated: bool = False,
        bias: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        if offset_init not in OFFSET_INITS:
            raise ValueError(f"deformable conv offset init must be one of {OFFSET_INITS}; got {offset_init!r}")
        pad = kernel_size // 2
        self.modulated = modulated
        per_tap = 3 if modulated else 2
        self.offset = nn.Conv2d(in_channels, per_tap * kernel_size * kernel_size, kernel_size, padding=pad)
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size, padding=pad, bias=bias, impl=impl)
        if offset_init == "xavier":
            nn.init.xavier_uniform_(self.offset.weight)
        else:
            nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        nn.init.xavier_uniform_(self.conv.weight)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset(x)
        if not self.modulated:
            return self.conv(x, out)
        taps = out.shape[1] // 3
        return self.conv(x, out[:, : 2 * taps], torch.sigmoid(out[:, 2 * taps :]))


class AFAFPN(nn.Module):
    """Deformable laterals on every input level, top-down concatenation, deformable outputs.

    Args:
        in_channels: channels of the input maps, finest first (res3, res4, res5).
        out_channels: channels of every lateral and output map.
        num_outs: how many output levels to build, finest first (1 = P3 only, as AlignPS
            infers; 3 = P3, P4, P5 for FCOS-style multi-level assignment).
        offset_init: init of every deformable conv's offset conv (see DeformConvWithOffsets).
        deform_impl: deformable-conv implementation (MODEL.ALIGNPS.DEFORM_CONV_IMPL).
        negative_levels: levels built in training only, coarser than the last of ``num_outs``
            (MODEL.ALIGNPS.NEGATIVE_LEVELS): first the remaining deformable output convs (one per
            input level), then stride-2 3x3 plain convs, the first on the last output and each next
            on the relu of the previous, as the reference neck's extra levels
            (mmdet/models/necks/fpn_dcn_lconv3_dcn.py:201-228 with add_extra_convs 'on_output' and
            relu_before_extra_convs). Eval builds the ``num_outs`` levels only (fpn_dcn_lconv3_dcn.py:229-232).
            Taken as given: AlignPSBranch.from_config checks it (branch._check_negative_levels).
    Output level ``i`` sees the concatenation of lateral ``i`` and the upsampled
    aggregate of all coarser levels, i.e. ``(L - i) * out_channels`` channels.
    """

    def __init__(
        self, in_channels: List[int], out_channels: int, num_outs: int, offset_init: str = "xavier",
        deform_impl: str = "auto", negative_levels: int = 0,
    ):
        super().__init__()
        if not 1 <= num_outs <= len(in_channels):
            raise ValueError(
                f"AFAFPN: num_outs must be in [1, {len(in_channels)}] (one per input level); got {num_outs}"
            )
        num_in = len(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.laterals = nn.ModuleList(
            DeformConvWithOffsets(c, out_channels, offset_init=offset_init, impl=deform_impl) for c in in_channels
        )
        num_deform = min(num_outs + negative_levels, num_in)
        self.outputs = nn.ModuleList(
            DeformConvWithOffsets((num_in - i) * out_channels, out_channels, offset_init=offset_init, impl=deform_impl)
            for i in range(num_deform)
        )
        self.extras = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            for _ in range(num_outs + negative_levels - num_deform)
        )
        for conv in self.extras:  # the reference neck's init_weights: xavier uniform on every nn.Conv2d
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """The ``num_outs`` real levels, finest first; in training followed by the negative-only levels."""
        if len(inputs) != len(self.laterals):
            raise ValueError(f"AFAFPN expects {len(self.laterals)} input maps; got {len(inputs)}")
        merged = [lateral(x) for lateral, x in zip(self.laterals, inputs)]
        for i in range(len(merged) - 1, 0, -1):
            up = F.interpolate(merged[i], size=merged[i - 1].shape[-2:], mode="nearest")
            merged[i - 1] = torch.cat([merged[i - 1], up], dim=1)
        if not self.training:
            return [self.outputs[i](merged[i]) for i in range(self.num_outs)]
        outs = [conv(merged[i]) for i, conv in enumerate(self.outputs)]
        for j, conv in enumerate(self.extras):
            outs.append(conv(outs[-1] if j == 0 else F.relu(outs[-1])))
        return outs
