"""The pure-PyTorch deformable convolution equals torchvision's (values and every gradient),
and MODEL.ALIGNPS.DEFORM_CONV_IMPL picks the implementation the AFA neck runs; traced (for
export), the grid_sample form follows the input size."""

import pytest
import torch
from torchvision.ops import DeformConv2d as TorchvisionDeformConv2d
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from galw.modeling.alignps import AFAFPN
from galw.modeling.deform_conv import (
    DeformConv2d, _next_pow2, deform_conv2d, deform_conv2d_grid_sample, resolve_impl,
)


def _out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - (dil * (k - 1) + 1)) // stride + 1


def _case(gen, n, c, h, w, c_out, k, stride, pad, dil, groups, offset_groups, offsets, use_mask, dtype, device="cpu"):
    ho, wo = _out_size(h, k, stride, pad, dil), _out_size(w, k, stride, pad, dil)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(c_out, c // groups, k, k, generator=gen, dtype=dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype)
    off_shape = (n, 2 * offset_groups * k * k, ho, wo)
    if offsets == "zero":  # the offset convs' init: every sample on an integer pixel
        offset = torch.zeros(off_shape, dtype=dtype)
    elif offsets == "integer":  # integer shifts, some landing outside the image
        offset = torch.randint(-4, 5, off_shape, generator=gen).to(dtype)
    else:  # fractional shifts, many beyond the border (zero-padded samples)
        offset = torch.randn(off_shape, generator=gen, dtype=dtype) * offsets
    mask = torch.rand(n, offset_groups * k * k, ho, wo, generator=gen, dtype=dtype) if use_mask else None
    tensors = [t.to(device) for t in (x, offset, weight, bias)] + ([mask.to(device)] if use_mask else [])
    return tensors, dict(stride=stride, padding=pad, dilation=dil)


def _values_and_grads(fn, tensors, kwargs, grad_out_seed=1):
    leaves = [t.clone().requires_grad_() for t in tensors]
    x, offset, weight, bias = leaves[:4]
    mask = leaves[4] if len(leaves) == 5 else None
    y = fn(x, offset, weight, bias, mask=mask, **kwargs)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=y.dtype).to(y.device)
    return [y] + list(torch.autograd.grad(y, leaves, g))


NAMES = ["output", "input", "offset", "weight", "bias", "mask"]

# n, c, h, w, c_out, k, stride, pad, dil, groups, offset_groups, offsets, mask
CASES = [
    (2, 6, 7, 9, 4, 3, 1, 1, 1, 1, 1, "zero", False),
    (2, 6, 7, 9, 4, 3, 1, 1, 1, 1, 1, "integer", False),
    (2, 6, 7, 9, 4, 3, 1, 1, 1, 1, 1, 2.0, False),
    (1, 8, 11, 5, 6, 3, 2, 2, 2, 2, 2, 1.5, True),
    (3, 4, 16, 16, 2, 1, 1, 0, 1, 1, 4, 0.7, False),
    (1, 6, 1, 1, 3, 3, 1, 1, 1, 3, 1, 0.5, True),  # a 1x1 map
    (2, 4, 6, 13, 4, 5, 3, 2, 1, 1, 2, "integer", True),
    (1, 3, 9, 8, 5, 3, 1, 0, 3, 1, 1, 3.0, False),
]


@pytest.mark.parametrize("case", CASES)
def test_grid_sample_equals_torchvision_values_and_gradients(case):
    tensors, kwargs = _case(torch.Generator().manual_seed(0), *case, dtype=torch.float64)
    ref = _values_and_grads(torchvision_deform_conv2d, tensors, kwargs)
    got = _values_and_grads(deform_conv2d_grid_sample, tensors, kwargs)
    for name, a, b in zip(NAMES, ref, got):
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=f"{name} differs for case {case}")


@pytest.mark.parametrize("offsets", ["zero", 0.5])
def test_equal_at_the_demo_shapes_in_float32(offsets):
    # The demo's AFA output conv: batch 2, 3 * 64 concatenated channels, P3 of a 320x240 image.
    tensors, kwargs = _case(torch.Generator().manual_seed(3), 2, 192, 30, 40, 64, 3, 1, 1, 1, 1, 1, offsets, False,
                            dtype=torch.float32)
    ref = _values_and_grads(torchvision_deform_conv2d, tensors, kwargs)
    got = _values_and_grads(deform_conv2d_grid_sample, tensors, kwargs)
    for name, a, b in zip(NAMES, ref, got):
        scale = float(a.abs().max())
        assert float((a - b).abs().max()) <= 2e-5 * scale, name


def test_bad_offset_shape_is_a_clear_error():
    x, w = torch.zeros(1, 4, 5, 5), torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"offset must be \[1, 2 \* offset_groups \* 9, 5, 5\]"):
        deform_conv2d_grid_sample(x, torch.zeros(1, 17, 5, 5), w, padding=1)


def test_impl_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_impl("auto", cpu) == "grid_sample"
    assert resolve_impl("auto", cuda) == "torchvision"
    assert resolve_impl("torchvision", cpu) == "torchvision"
    assert resolve_impl("grid_sample", cuda) == "grid_sample"
    with pytest.raises(ValueError, match="MODEL.ALIGNPS.DEFORM_CONV_IMPL must be one of"):
        resolve_impl("cuda", cpu)
    with pytest.raises(ValueError, match="DEFORM_CONV_IMPL"):
        DeformConv2d(4, 4, 3, impl="fast")


def test_module_keeps_torchvision_parameters_and_dispatches(monkeypatch):
    ours = DeformConv2d(4, 6, 3, padding=1, impl="grid_sample")
    theirs = TorchvisionDeformConv2d(4, 6, 3, padding=1)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 8, 7)
    offset = torch.randn(2, 18, 8, 7)
    torch.testing.assert_close(ours(x, offset), theirs(x, offset), rtol=1e-5, atol=1e-5)

    calls = []
    import galw.modeling.deform_conv as dc

    monkeypatch.setattr(dc, "deform_conv2d_grid_sample", lambda *a, **k: calls.append("gs") or torch.zeros(1))
    monkeypatch.setattr(dc, "_torchvision_deform_conv2d", lambda *a, **k: calls.append("tv") or torch.zeros(1))
    for impl in ("auto", "grid_sample", "torchvision"):
        deform_conv2d(x, offset, ours.weight, ours.bias, padding=1, impl=impl)
    assert calls == ["gs", "gs", "tv"]


def test_config_key_reaches_the_afa_neck():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from galw.config import add_galw_config
    from galw.modeling.alignps.branch import AlignPSBranch

    cfg = add_galw_config(get_cfg())
    assert cfg.MODEL.ALIGNPS.DEFORM_CONV_IMPL == "auto"
    cfg.MODEL.ALIGNPS.DEFORM_CONV_IMPL = "torchvision"
    cfg.MODEL.ALIGNPS.FPN_CHANNELS = 32
    cfg.MODEL.OIM.NUM_LABELED = 5
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    shapes = {"res3": ShapeSpec(channels=128, stride=8), "res4": ShapeSpec(channels=256, stride=16)}
    afa = AlignPSBranch.from_config(cfg, shapes)["afa"]
    impls = {m.impl for m in afa.modules() if isinstance(m, DeformConv2d)}
    assert impls == {"torchvision"}


def test_afa_neck_same_outputs_and_gradients_with_either_impl():
    torch.manual_seed(0)
    fast = AFAFPN([8, 12, 16], 8, 1, deform_impl="grid_sample").double()
    slow = AFAFPN([8, 12, 16], 8, 1, deform_impl="torchvision").double()
    for m in fast.modules():  # learned offsets, not the zero init
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 18:
            torch.nn.init.normal_(m.weight, std=0.3)
    slow.load_state_dict(fast.state_dict())
    inputs = [torch.randn(2, c, s, s + 1, dtype=torch.float64) for c, s in ((8, 12), (12, 6), (16, 3))]
    out_f, out_s = fast(inputs)[0], slow(inputs)[0]
    torch.testing.assert_close(out_f, out_s, rtol=1e-10, atol=1e-10)
    out_f.square().sum().backward()
    out_s.square().sum().backward()
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grid_sample_equals_torchvision_on_cuda():
    tensors, kwargs = _case(torch.Generator().manual_seed(0), *CASES[3], dtype=torch.float64, device="cuda")
    ref = _values_and_grads(torchvision_deform_conv2d, tensors, kwargs)
    got = _values_and_grads(deform_conv2d_grid_sample, tensors, kwargs)
    for name, a, b in zip(NAMES, ref, got):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=name)


def test_next_pow2():
    assert [_next_pow2(n) for n in (1, 2, 3, 64, 65, 1023, 1025)] == [1, 2, 4, 64, 128, 1024, 2048]


class _GridSampleConv(torch.nn.Module):
    def forward(self, x, offset, weight, bias, mask):
        return deform_conv2d_grid_sample(x, offset, weight, bias, padding=1, mask=mask)


def test_exported_grid_sample_follows_the_input_size():
    # exported at 7x9 (padded to 8x16), run at sizes whose power-of-two padding differs, including none
    gen = torch.Generator().manual_seed(0)
    h, w = torch.export.Dim("h", min=3, max=64), torch.export.Dim("w", min=3, max=64)
    program = None
    for size in ((7, 9), (11, 5), (16, 16), (17, 3)):
        tensors, kwargs = _case(gen, 1, 4, *size, 3, 3, 1, 1, 1, 1, 1, 1.5, True, dtype=torch.float64)
        if program is None:
            program = torch.export.export(_GridSampleConv(), tuple(tensors), dynamic_shapes=(
                {2: h, 3: w}, {2: h, 3: w}, None, None, {2: h, 3: w})).module()
        want = torchvision_deform_conv2d(*tensors[:4], mask=tensors[4], **kwargs)
        torch.testing.assert_close(program(*tensors), want, rtol=1e-10, atol=1e-10, msg=f"{size}")


def test_exported_grid_sample_has_no_power_of_two_padding():
    # the symbolic sizes stay those of the input: no pad op and no min/max chain in any shape
    h, w = torch.export.Dim("h", min=3, max=64), torch.export.Dim("w", min=3, max=64)
    tensors, _ = _case(torch.Generator().manual_seed(0), 1, 4, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1.5, True, dtype=torch.float32)
    program = torch.export.export(_GridSampleConv(), tuple(tensors), dynamic_shapes=(
        {2: h, 3: w}, {2: h, 3: w}, None, None, {2: h, 3: w}))
    nodes = list(program.graph.nodes)
    assert torch.ops.aten.grid_sampler.default in {n.target for n in nodes}
    assert not [n for n in nodes if n.target in (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)]
    shapes = " ".join(str(n.meta["val"].shape) for n in nodes if isinstance(n.meta.get("val"), torch.Tensor))
    assert "Min" not in shapes and "Max" not in shapes
