"""Convolution of small (ROI-sized) maps as unfold + one matrix product, for CPU training.

The NAE ROI head runs a res5 on every sampled ROI; at the demo's 4x4 pooling its 3x3 convs
see 2x2 maps (the first, strided one 4x4). With 2 threads, oneDNN's CPU backward for such maps
is slow: for 32 ROIs of 512 channels at 2x2, forward + backward of one 3x3 conv took 119 ms
against 33 ms for ``F.unfold`` and a matrix product, a third of the demo's training step (with
one thread the whole step took the same time either way; docs/benchmarks.md). The same product
on larger maps or 1x1 kernels is slower than oneDNN, so the unfold path is taken only where it
was measured to win: CPU, kernel larger than 1x1, input of at most
``UNFOLD_MAX_PIXELS`` pixels. The function is ``F.conv2d``'s with zero padding, in values and
gradients (tests/modeling/test_small_map_conv.py).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d

__all__ = ["SMALL_MAP_CONV_IMPLS", "SmallMapConv2d", "conv2d_unfold", "use_small_map_convs"]

# "auto": unfold + matmul on CPU for kernels > 1x1 on maps of <= UNFOLD_MAX_PIXELS pixels,
# F.conv2d otherwise; "native": always F.conv2d; "unfold": always unfold + matmul.
SMALL_MAP_CONV_IMPLS = ("auto", "native", "unfold")
UNFOLD_MAX_PIXELS = 16


def conv2d_unfold(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d`` (zero padding, integer ``padding``) as ``F.unfold`` and one matrix product per
    group over all images and output pixels (a weight broadcast over the images would cost a
    product per image and a sum of per-image weight gradients in the backward)."""
    n, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    pixels, taps = h_out * w_out, c_per_group * kh * kw
    # Columns [N, C * kh * kw, L], channel-major: each group's rows are contiguous.
    columns = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    columns = columns.view(n, groups, taps, pixels).permute(1, 2, 0, 3).reshape(groups, taps, n * pixels)
    # weight @ columns (not columns @ weight^T): the weight's gradient then comes out in the weight's
    # own layout, where the transposed product made the backward copy every 512x512x3x3 gradient.
    out = torch.bmm(weight.reshape(groups, c_out // groups, taps), columns)
    # contiguous, as F.conv2d's output (a later .view() must work on either path)
    out = out.view(groups, c_out // groups, n, pixels).permute(2, 0, 1, 3).contiguous().view(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class SmallMapConv2d(Conv2d):
    """detectron2's ``Conv2d`` (same parameters, state-dict keys, norm and activation) that
    convolves small CPU maps by :func:`conv2d_unfold`; made by :func:`use_small_map_convs`."""

    impl: str = "auto"

    def _unfolds(self, x: torch.Tensor) -> bool:
        if self.impl == "native" or isinstance(self.padding, str):
            return False
        if self.impl == "unfold":
            return True
        return x.device.type == "cpu" and self.kernel_size != (1, 1) and x.shape[-2] * x.shape[-1] <= UNFOLD_MAX_PIXELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unfolds(x):
            x = conv2d_unfold(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        elif torch.compiler.is_exporting():
            # detectron2's forward branches on x.numel() == 0 (layers/wrappers.py:100): an exported ROI count
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        else:
            return super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl}"


def use_small_map_convs(module: nn.Module, impl: str) -> nn.Module:
    """Make every detectron2 ``Conv2d`` inside ``module`` a :class:`SmallMapConv2d` choosing by
    ``impl`` (MODEL.NAE.RES5_CONV_IMPL); in place: parameters, buffers and names are kept."""
    if impl not in SMALL_MAP_CONV_IMPLS:
        raise ValueError(f"MODEL.NAE.RES5_CONV_IMPL must be one of {SMALL_MAP_CONV_IMPLS}; got {impl!r}")
    for m in module.modules():
        if type(m) is Conv2d:
            m.__class__ = SmallMapConv2d
            m.impl = impl
    return module
