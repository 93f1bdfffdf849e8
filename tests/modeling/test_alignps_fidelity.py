"""The AlignPS head as the reference (FCOSReidHeadFocalSubTriQueue3 with
dcn_on_last_conv, FPNDcnLconv3Dcn): focal OIM at scale 10, a lookup table that is not renormalised,
DCNv2 on the last conv of both towers (zero offsets, masks 0.5) and Xavier-initialised neck offsets."""
import math

import pytest
import torch
import torch.nn.functional as F

import galw
from detectron2.config import get_cfg

from galw.modeling.alignps.afa import AFAFPN, DeformConvWithOffsets
from galw.modeling.alignps.head import DenseHead
from galw.modeling.oim import OIMLoss


def _oim(**kw):
    oim = OIMLoss(feat_dim=2, num_labeled=2, queue_size=0, momentum=0.5, **kw)
    oim.lookup_table.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    return oim


def test_focal_oim_hand_value():
    # logits 10 * (1, 0): p = e^10 / (e^10 + 1); focal loss -(1 - p)^2 log p
    p = math.exp(10) / (math.exp(10) + 1)
    x = torch.tensor([[1.0, 0.0]])
    assert _oim(temperature=10.0, focal_gamma=2.0)(x, torch.tensor([0])).item() == pytest.approx(
        -(1 - p) ** 2 * math.log(p), rel=1e-3)
    assert _oim(temperature=10.0)(x, torch.tensor([0])).item() == pytest.approx(-math.log(p), rel=1e-3)
    # a wrong identity: p = 1 / (e^10 + 1), focal weight (1 - p)^2 ~ 1
    q = 1 / (math.exp(10) + 1)
    assert _oim(temperature=10.0, focal_gamma=2.0)(x, torch.tensor([1])).item() == pytest.approx(
        -(1 - q) ** 2 * math.log(q), rel=1e-3)


def test_lookup_table_update_not_renormalised():
    x = torch.tensor([[0.0, 1.0]])
    kept = _oim(renormalize=False)
    kept(x, torch.tensor([0]))
    assert kept.lookup_table[0].tolist() == pytest.approx([0.5, 0.5])  # 0.5 * (1, 0) + 0.5 * (0, 1)
    renormalised = _oim()
    renormalised(x, torch.tensor([0]))
    assert renormalised.lookup_table[0].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])


def test_alignps_defaults_are_the_reference():
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    a = cfg.MODEL.ALIGNPS
    assert (a.OIM_TEMPERATURE, a.OIM_FOCAL_GAMMA, a.OIM_RENORMALIZE) == (10.0, 2.0, False)
    assert (a.DCN_ON_LAST_CONV, a.DEFORM_OFFSET_INIT) == (True, "xavier")


def test_modulated_dcn_at_init_is_half_a_plain_conv():
    torch.manual_seed(0)
    dcn = DeformConvWithOffsets(4, 3, modulated=True)
    x = torch.randn(2, 4, 6, 5)
    plain = F.conv2d(x, dcn.conv.weight, dcn.conv.bias, padding=1)
    # zero offsets sample the regular grid; every mask is sigmoid(0) = 0.5 (bias added after)
    expected = 0.5 * (plain - dcn.conv.bias[None, :, None, None]) + dcn.conv.bias[None, :, None, None]
    assert torch.allclose(dcn(x), expected, atol=1e-5)
    assert dcn.offset.out_channels == 27 and dcn.offset.weight.abs().max() == 0


def test_head_last_tower_conv_is_dcn_with_zero_offsets():
    head = DenseHead(32, 3, "GN", [8], 0.01, dcn_on_last_conv=True)
    for tower in (head.cls_tower, head.box_tower):
        dcns = [m for m in tower if isinstance(m, DeformConvWithOffsets)]
        assert len(dcns) == 1 and tower[-3] is dcns[0] and dcns[0].modulated
        assert dcns[0].offset.weight.abs().max() == 0 and dcns[0].conv.bias is None  # GN follows
        assert isinstance(tower[-2], torch.nn.GroupNorm)
    logits, dists, ctrs = head([torch.randn(1, 32, 8, 8)])
    assert logits[0].shape == (1, 1, 8, 8) and dists[0].shape == (1, 4, 8, 8)
    plain = DenseHead(32, 3, "GN", [8], 0.01)
    assert not any(isinstance(m, DeformConvWithOffsets) for m in plain.modules())


def test_neck_offsets_xavier_or_zero():
    torch.manual_seed(0)
    afa = AFAFPN([8, 16, 32], 12, num_outs=1)
    for unit in list(afa.laterals) + list(afa.outputs):
        w = unit.offset.weight
        fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert 0 < w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2)
        assert unit.offset.bias.abs().max() == 0
    zero = AFAFPN([8, 16, 32], 12, num_outs=1, offset_init="zero")
    assert all(u.offset.weight.abs().max() == 0 for u in zero.laterals)
    with pytest.raises(ValueError, match="offset init"):
        DeformConvWithOffsets(4, 4, offset_init="normal")
