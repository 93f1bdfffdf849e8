"""The unfold convolution equals F.conv2d (values and every gradient), the NAE ROI res5 runs it
where MODEL.NAE.RES5_CONV_IMPL says, and the model's losses and gradients do not change with it."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import Conv2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import galw.modeling.small_map_conv as small_map_conv
from galw.modeling.small_map_conv import SmallMapConv2d, conv2d_unfold, use_small_map_convs
from nae_helpers import synthetic_batch, tiny_nae_cfg

# n, c, h, w, c_out, k, stride, pad, dil, groups, bias
CASES = [
    (4, 8, 2, 2, 6, 3, 1, 1, 1, 1, False),  # the demo's res5: 3x3 on 2x2 ROI maps
    (4, 6, 4, 4, 8, 3, 2, 1, 1, 1, True),  # res5's first, strided conv
    (2, 6, 4, 4, 4, 1, 2, 0, 1, 1, False),  # the strided 1x1 shortcut
    (3, 8, 5, 7, 4, 3, 1, 2, 2, 2, True),  # dilation, groups, non-square
    (1, 4, 1, 1, 2, 3, 1, 1, 1, 1, True),  # a 1x1 map
    (2, 4, 9, 6, 6, (3, 5), (2, 1), (1, 2), 1, 1, False),  # rectangular kernel
]


def _pairs(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("case", CASES)
def test_equals_conv2d_in_values_and_gradients(case):
    n, c, h, w, c_out, k, stride, pad, dil, groups, use_bias = case
    gen = torch.Generator().manual_seed(0)
    kh, kw = _pairs(k)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c // groups, kh, kw, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64) if use_bias else None
    args = (_pairs(stride), _pairs(pad), _pairs(dil), groups)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias) if t is not None]
        y = fn(leaves[0], leaves[1], leaves[2] if use_bias else None, *args)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        return [y] + list(torch.autograd.grad(y, leaves, g))

    ours_all = run(conv2d_unfold)
    assert ours_all[0].is_contiguous()  # as F.conv2d's: a later .view() works on either path
    for ours, ref, name in zip(ours_all, run(F.conv2d), ["output", "input", "weight", "bias"]):
        assert ours.shape == ref.shape, name
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12, msg=name)


def _counting(monkeypatch):
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return conv2d_unfold(*args)

    monkeypatch.setattr(small_map_conv, "conv2d_unfold", counted)
    return calls


@pytest.mark.parametrize(
    "impl, kernel, size, unfolds",
    [
        ("auto", 3, 2, True),  # 4 pixels, 3x3: measured faster as unfold
        ("auto", 3, 4, True),  # 16 pixels: the limit
        ("auto", 3, 5, False),  # 25 pixels: oneDNN is faster
        ("auto", 1, 2, False),  # 1x1 kernels: oneDNN is faster
        ("native", 3, 2, False),
        ("unfold", 1, 7, True),
    ],
)
def test_which_maps_unfold(monkeypatch, impl, kernel, size, unfolds):
    calls = _counting(monkeypatch)
    conv = use_small_map_convs(torch.nn.Sequential(Conv2d(4, 6, kernel, padding=kernel // 2)), impl)[0]
    x = torch.randn(2, 4, size, size)
    with torch.no_grad():
        plain = F.conv2d(x, conv.weight, conv.bias, padding=kernel // 2)
        torch.testing.assert_close(conv(x), plain, rtol=1e-5, atol=1e-5)
    assert len(calls) == (1 if unfolds else 0)


def test_norm_activation_and_names_kept():
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm2d(6).eval()
    norm.running_mean.uniform_(-1, 1)
    conv = Conv2d(4, 6, 3, padding=1, bias=False, norm=norm, activation=F.relu)
    keys = list(conv.state_dict())
    x = torch.randn(3, 4, 2, 2)
    with torch.no_grad():
        expected = conv(x)
        use_small_map_convs(torch.nn.ModuleList([conv]), "unfold")
        assert type(conv) is SmallMapConv2d and conv.norm is norm
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-6)
    assert list(conv.state_dict()) == keys


def test_unknown_impl_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="MODEL.NAE.RES5_CONV_IMPL"):
        use_small_map_convs(torch.nn.Sequential(), "fast")
    with pytest.raises(ValueError, match="MODEL.NAE.RES5_CONV_IMPL"):
        build_model(tiny_nae_cfg("MODEL.NAE.RES5_CONV_IMPL", "fast"))


def _losses_and_grads(impl):
    torch.manual_seed(0)
    # 4x4 ROIAlign: res5 convolves 2x2 maps, as in the demo
    model = build_model(tiny_nae_cfg("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4, "MODEL.NAE.RES5_CONV_IMPL", impl)).train()
    convs = [m for m in model.branches["NAEBranch"].roi_heads.res5.modules() if isinstance(m, Conv2d)]
    with EventStorage():
        losses = model(synthetic_batch())
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return convs, {k: v.item() for k, v in losses.items()}, grads


def test_nae_res5_converted_and_model_unchanged(monkeypatch):
    calls = _counting(monkeypatch)
    convs, native_losses, native_grads = _losses_and_grads("native")
    assert convs and all(type(m) is SmallMapConv2d and m.impl == "native" for m in convs)
    assert calls == []
    convs, losses, grads = _losses_and_grads("auto")
    assert all(m.impl == "auto" for m in convs)
    # the two 3x3 convs of each of res5's two basic blocks (the 1x1 shortcut stays with oneDNN)
    assert len(calls) == 4 and all(shape[-2:] in ((4, 4), (2, 2)) for shape in calls)
    assert losses == pytest.approx(native_losses, rel=1e-4, abs=1e-5)
    assert grads.keys() == native_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, native_grads[name], rtol=1e-3, atol=1e-4, msg=name)
