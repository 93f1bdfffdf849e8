"""Deformable convolution with torchvision's semantics, and a choice of implementation.

torchvision's CPU ``deform_conv2d`` is a per-location loop and dominated the demo's CPU
training step (its backward alone about two thirds of it). ``deform_conv2d_grid_sample``
computes the same function with one ``grid_sample`` (bilinear, zero outside) that gathers
all kernel taps at once, then one batched matrix product with the weight, so both
directions run on PyTorch's vectorised kernels and autograd.

Exactness: torchvision samples pixel ``p`` at ``base + offset`` and differentiates the
bilinear weights one-sidedly (``floor``) at integer positions, which is where every
sample sits while the offset convs are still at their zero init. ``grid_sample`` with
``align_corners=False`` maps a normalised ``g`` back to ``((g + 1) * size - 1) / 2``;
that round trip is exact in floating point only when ``size`` is a power of two, so the
input is zero-padded on the bottom/right to power-of-two sizes (zeros are exactly what
torchvision reads outside the image) and integer positions stay integer.
An exported program (symbolic sizes) is only evaluated, never differentiated: it keeps the
input's size, as the padding would put a chain of integer min/max ops for the power of two into
every shape after it, which ``torch.export.load`` then parses with sympy.

Inference (no autograd) runs ``deform_conv2d_gather``: the input is copied once pixel-major
(``[N * H * W, C]``), every (output location, tap) sample is one bag of its 4 bilinear corners
with torchvision's weights (times the mask), and, in blocks of output locations whose columns
stay in cache, one ``embedding_bag`` gathers the block's columns and one matrix product applies
the weight. Same order of operations as torchvision's (sample, then the dot product over channels
and taps); no padded copy, no ``grid_sample``. One CPU thread, a 1500x900 image's P3 map: 0.46 s
vs 0.76 s for weight-first-then-gather (256 -> 256, the head's DCNs) and 1.0 s vs 1.9 s for
``grid_sample`` + matmul (768 -> 256, the AFA output conv); float32 differences of a few 1e-6
relative (a different blocking of the sums).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torchvision.ops import DeformConv2d as _TorchvisionDeformConv2d
from torchvision.ops import deform_conv2d as _torchvision_deform_conv2d

__all__ = [
    "DEFORM_CONV_IMPLS", "DeformConv2d", "deform_conv2d", "deform_conv2d_gather", "deform_conv2d_grid_sample",
    "resolve_impl",
]

# "auto": on CPU "gather" where no gradient is needed and "grid_sample" otherwise; torchvision's
# compiled kernel on CUDA (where it is fast). "gather" is an inference kernel: a call that is
# differentiated runs "grid_sample" (the offset gradient at integer positions is torchvision's there).
DEFORM_CONV_IMPLS = ("auto", "torchvision", "grid_sample", "gather")

IntPair = Union[int, Tuple[int, int]]


def resolve_impl(impl: str, device: torch.device, needs_grad: bool = True) -> str:
    """The concrete implementation ("torchvision", "grid_sample" or "gather") for ``impl`` on ``device``;
    ``needs_grad``: whether the call is differentiated (training) or only evaluated (inference)."""
    if impl not in DEFORM_CONV_IMPLS:
        raise ValueError(f"MODEL.ALIGNPS.DEFORM_CONV_IMPL must be one of {DEFORM_CONV_IMPLS}; got {impl!r}")
    if impl == "auto":
        if device.type != "cpu":
            return "torchvision"
        return "grid_sample" if needs_grad else "gather"
    return impl


def _next_pow2(n: int) -> int:
    """The smallest power of two >= ``n``."""
    return 1 << max(0, (n - 1).bit_length())


def _geometry(input, weight, stride, padding, dilation):
    """The (stride, padding, dilation) pairs and the output (height, width) of a conv of ``weight``
    over ``input``, as torchvision's deform_conv2d computes them."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    size = tuple((input.shape[2 + i] + 2 * padding[i] - (dilation[i] * (weight.shape[2 + i] - 1) + 1)) // stride[i] + 1
                 for i in range(2))
    return stride, padding, dilation, size


def deform_conv2d_grid_sample(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (same arguments, layouts and values) in pure PyTorch.

    ``offset`` is ``[N, 2 * G * kh * kw, Ho, Wo]`` holding, per offset group ``G`` and kernel
    tap (row-major), a (dy, dx) pair; ``mask`` (modulated, v2) is ``[N, G * kh * kw, Ho, Wo]``.
    Weight groups come from ``weight.shape[1]`` as in torchvision.
    """
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w), (h_out, w_out) = _geometry(
        input, weight, stride, padding, dilation)
    n, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    if c % c_per_group != 0 or c_out % (c // c_per_group) != 0:
        raise ValueError(
            f"deform_conv2d: input channels {c} and output channels {c_out} must be multiples of the "
            f"weight's {c_per_group} input channels per group"
        )
    groups = c // c_per_group
    if h_out <= 0 or w_out <= 0:
        raise ValueError(f"deform_conv2d: output size {h_out}x{w_out} from input {h}x{w} is empty")
    if offset.shape[0] != n or offset.shape[2:] != (h_out, w_out) or offset.shape[1] % (2 * taps) != 0:
        raise ValueError(
            f"deform_conv2d: offset must be [{n}, 2 * offset_groups * {taps}, {h_out}, {w_out}]; "
            f"got {list(offset.shape)}"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if c % offset_groups != 0:
        raise ValueError(f"deform_conv2d: {c} input channels are not divisible by {offset_groups} offset groups")
    if mask is not None and mask.shape != (n, offset_groups * taps, h_out, w_out):
        raise ValueError(
            f"deform_conv2d: mask must be [{n}, {offset_groups * taps}, {h_out}, {w_out}]; got {list(mask.shape)}"
        )

    # Power-of-two sizes keep grid_sample's coordinate round trip exact (module docstring). Under
    # torch.export (symbolic sizes) the program is never differentiated, so the size is kept.
    if isinstance(h, int) and isinstance(w, int):
        hp, wp = _next_pow2(h), _next_pow2(w)
        padded = F.pad(input, (0, wp - w, 0, hp - h)) if (hp, wp) != (h, w) else input
    else:
        hp, wp, padded = h, w, input

    # Sampling positions (pixels): output location * stride - padding + tap * dilation + offset.
    dtype, device = offset.dtype, offset.device
    ky, kx = torch.meshgrid(
        torch.arange(kh, device=device, dtype=dtype) * dil_h,
        torch.arange(kw, device=device, dtype=dtype) * dil_w,
        indexing="ij",
    )
    base_y = ky.reshape(taps, 1, 1) + (torch.arange(h_out, device=device, dtype=dtype) * stride_h - pad_h).view(1, -1, 1)
    base_x = kx.reshape(taps, 1, 1) + (torch.arange(w_out, device=device, dtype=dtype) * stride_w - pad_w).view(1, 1, -1)
    off = offset.view(n, offset_groups, taps, 2, h_out, w_out)
    pos_y = base_y + off[:, :, :, 0]
    pos_x = base_x + off[:, :, :, 1]
    # Normalised for align_corners=False: g = (2 p + 1) / size - 1 (exact for power-of-two size).
    grid = torch.stack((pos_x * (2.0 / wp) + (1.0 / wp - 1.0), pos_y * (2.0 / hp) + (1.0 / hp - 1.0)), dim=-1)
    grid = grid.view(n * offset_groups, taps * h_out, w_out, 2)

    sampled = F.grid_sample(
        padded.reshape(n * offset_groups, c // offset_groups, hp, wp),
        grid.to(input.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [N * G, C / G, taps * Ho, Wo]
    if mask is not None:
        sampled = sampled.view(n, offset_groups, c // offset_groups, taps, h_out * w_out) * mask.view(
            n, offset_groups, 1, taps, h_out * w_out
        ).to(sampled.dtype)
    # Columns [N, groups, C/groups * taps, L] against weight [groups, Cout/groups, C/groups * taps],
    # the weight broadcast over the N images: for a few images of many pixels that was 6-11 % faster
    # (forward + backward, the demo's AFA shapes) than small_map_conv's one product over all N * L,
    # which wins for many ROIs of few pixels.
    columns = sampled.reshape(n, groups, c_per_group * taps, h_out * w_out)
    out = torch.matmul(weight.reshape(groups, c_out // groups, c_per_group * taps), columns)
    out = out.reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


# Columns per block of output locations (floats): blocks of 455 (256 channels) to 151 (768) locations
# measured 0.51 s and 1.03 s for the shapes of the module docstring, vs 0.64 s and 1.25 s for blocks of 4096.
_GATHER_BLOCK_ELEMENTS = 1 << 20


def _gather_applies(input, offset, weight) -> bool:
    """The gather kernel's reach: concrete shapes (no torch.export / tracing, whose programs keep the
    grid_sample form), one weight group and one offset group (every AFA and head conv)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if not all(isinstance(d, int) for d in (*input.shape, *offset.shape)):
        return False
    taps = weight.shape[2] * weight.shape[3]
    return weight.shape[1] == input.shape[1] and offset.shape[1] == 2 * taps


def deform_conv2d_gather(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` for one weight group and one offset group: the samples of
    torchvision's ``bilinear_interpolate`` (a corner outside the image reads zero; a position at or
    beyond -1 / size reads nothing) gathered by ``embedding_bag``, a block of locations at a time,
    each block's columns times the weight in one matrix product."""
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w), (h_out, w_out) = _geometry(
        input, weight, stride, padding, dilation)
    n, c, h, w = input.shape
    c_out, c_in, kh, kw = weight.shape
    taps = kh * kw
    if c_in != c or h_out <= 0 or w_out <= 0 or tuple(offset.shape) != (n, 2 * taps, h_out, w_out):
        raise ValueError(
            f"deform_conv2d_gather: one weight and offset group; input {list(input.shape)}, weight "
            f"{list(weight.shape)} and offset {list(offset.shape)} do not fit (offset [{n}, {2 * taps}, {h_out}, {w_out}])"
        )
    if mask is not None and tuple(mask.shape) != (n, taps, h_out, w_out):
        raise ValueError(f"deform_conv2d_gather: mask must be [{n}, {taps}, {h_out}, {w_out}]; got {list(mask.shape)}")
    pixels = input.reshape(n, c, h * w).transpose(1, 2).reshape(n * h * w, c).contiguous()

    dtype, device = offset.dtype, offset.device
    ky, kx = torch.meshgrid(
        torch.arange(kh, device=device, dtype=dtype) * dil_h,
        torch.arange(kw, device=device, dtype=dtype) * dil_w,
        indexing="ij",
    )
    off = offset.view(n, taps, 2, h_out, w_out)
    pos_y = (ky.reshape(1, taps, 1, 1) + (torch.arange(h_out, device=device, dtype=dtype) * stride_h - pad_h).view(
        1, 1, -1, 1)) + off[:, :, 0]
    pos_x = (kx.reshape(1, taps, 1, 1) + (torch.arange(w_out, device=device, dtype=dtype) * stride_w - pad_w).view(
        1, 1, 1, -1)) + off[:, :, 1]
    inside = (pos_y > -1) & (pos_y < h) & (pos_x > -1) & (pos_x < w)
    y_low, x_low = pos_y.floor(), pos_x.floor()
    ly, lx = pos_y - y_low, pos_x - x_low
    y_low, x_low = y_low.long(), x_low.long()
    base = torch.arange(n, device=device).view(n, 1, 1, 1) * (h * w)
    index, weights = [], []
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y_low + dy, x_low + dx
            valid = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index.append(base + yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))
            weights.append(torch.where(valid, wy * wx, torch.zeros((), dtype=dtype, device=device)))
    # one bag per (output location, tap): its 4 corners, rows in (image, location, tap) order
    index = torch.stack(index, dim=-1).permute(0, 2, 3, 1, 4).reshape(-1, 4)
    weights = torch.stack(weights, dim=-1)
    if mask is not None:
        weights = weights * mask.to(dtype).unsqueeze(-1)
    weights = weights.permute(0, 2, 3, 1, 4).reshape(-1, 4).to(pixels.dtype)
    # columns [location, (tap, channel)] against weight [(tap, channel), C_out]
    weight_t = weight.permute(2, 3, 1, 0).reshape(taps * c, c_out)
    locations = n * h_out * w_out
    out = pixels.new_empty((locations, c_out))
    block = min(max(_GATHER_BLOCK_ELEMENTS // (taps * c), 64), 1024)
    for start in range(0, locations, block):
        stop = min(start + block, locations)
        columns = F.embedding_bag(index[start * taps : stop * taps], pixels,
                                  per_sample_weights=weights[start * taps : stop * taps], mode="sum")
        torch.mm(columns.view(stop - start, taps * c), weight_t, out=out[start:stop])
    out = out.view(n, h_out * w_out, c_out).transpose(1, 2).contiguous().view(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Deformable convolution by the implementation ``impl`` names (see ``DEFORM_CONV_IMPLS``)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, offset, weight, bias, mask)
    )
    chosen = resolve_impl(impl, input.device, needs_grad)
    if chosen == "gather" and (needs_grad or not _gather_applies(input, offset, weight)):
        chosen = "grid_sample"
    if chosen == "gather":
        return deform_conv2d_gather(input, offset, weight, bias, stride, padding, dilation, mask)
    if chosen == "grid_sample":
        return deform_conv2d_grid_sample(input, offset, weight, bias, stride, padding, dilation, mask)
    return _torchvision_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


class DeformConv2d(_TorchvisionDeformConv2d):
    """torchvision's ``DeformConv2d`` (same parameters and state-dict keys) with a choice of
    implementation, resolved per call from the input's device."""

    def __init__(self, *args, impl: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        resolve_impl(impl, torch.device("cpu"))
        self.impl = impl

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl}"

