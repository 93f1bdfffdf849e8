"""The attribute localisation module: shapes, the constrained transform, its gradients, region pooling."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from galw.modeling.attribute import AttributeLocalization, constrained_affine


def test_constrained_affine_hand_values():
    raw = torch.tensor([[0.0, math.log(3.0), math.atanh(0.5), math.atanh(-0.25)]])
    theta = constrained_affine(raw)
    expected = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.75, -0.25]]])
    assert theta.shape == (1, 2, 3)
    assert torch.allclose(theta, expected, atol=1e-6)


def test_constrained_affine_stays_in_range():
    torch.manual_seed(0)
    theta = constrained_affine(torch.randn(500, 3, 4, dtype=torch.float64) * 3)
    scales = torch.stack([theta[..., 0, 0], theta[..., 1, 1]])
    shifts = theta[..., :, 2]
    assert bool((scales > 0).all()) and bool((scales < 1).all())
    assert bool((shifts > -1).all()) and bool((shifts < 1).all())
    # No rotation, no shear.
    assert bool((theta[..., 0, 1] == 0).all()) and bool((theta[..., 1, 0] == 0).all())


def test_constrained_affine_rejects_wrong_width():
    with pytest.raises(ValueError, match="last dimension of 4"):
        constrained_affine(torch.zeros(2, 6))


def test_alm_shapes():
    torch.manual_seed(0)
    alm = AttributeLocalization(channels=24, num_attributes=3, se_reduction=4)
    logits, theta = alm(torch.randn(5, 24, 32, 32))
    assert logits.shape == (5, 3)
    assert theta.shape == (5, 3, 2, 3)
    # Zero-initialised localisation nets start on the central half of the box.
    assert torch.allclose(theta[0, 0], torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match=r"\[R, 24, H, W\]"):
        alm(torch.randn(5, 16, 32, 32))


def test_alm_matches_the_direct_formulation():
    """Gating after sampling+pooling (the module) equals Tang et al.'s gate-then-sample-then-pool."""
    torch.manual_seed(1)
    alm = AttributeLocalization(channels=8, num_attributes=3, se_reduction=2, pooling="max", padding_mode="zeros")
    with torch.no_grad():
        alm.loc_weight.normal_(std=0.3)
        alm.loc_bias.normal_()
    x = torch.randn(4, 8, 12, 12)
    logits, theta = alm(x)
    for a in range(3):
        squeezed = x.mean(dim=(2, 3))
        hidden = F.relu(squeezed @ alm.se_reduce_weight[a].T + alm.se_reduce_bias[a])
        gate = torch.sigmoid(hidden @ alm.se_expand_weight[a].T + alm.se_expand_bias[a])
        gated = x * gate[:, :, None, None] + x
        raw = gated.amax(dim=(2, 3)) @ alm.loc_weight[a].T + alm.loc_bias[a]
        theta_a = torch.zeros(4, 2, 3)
        theta_a[:, 0, 0], theta_a[:, 1, 1] = torch.sigmoid(raw[:, 0]), torch.sigmoid(raw[:, 1])
        theta_a[:, 0, 2], theta_a[:, 1, 2] = torch.tanh(raw[:, 2]), torch.tanh(raw[:, 3])
        grid = F.affine_grid(theta_a, list(x.shape), align_corners=False)
        region = F.grid_sample(gated, grid, align_corners=False)
        direct = region.amax(dim=(2, 3)) @ alm.cls_weight[a] + alm.cls_bias[a]
        assert torch.allclose(theta[:, a], theta_a, atol=1e-6)
        assert torch.allclose(logits[:, a], direct, atol=1e-5)


def test_alm_gradients_reach_the_transform():
    """The spatial transform is differentiable: numerical and analytical gradients agree."""
    torch.manual_seed(2)
    alm = AttributeLocalization(channels=4, num_attributes=2, se_reduction=2).double()
    with torch.no_grad():
        alm.cls_weight.normal_()
        alm.loc_weight.normal_(std=0.3)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    loc_weight = alm.loc_weight.detach().clone().requires_grad_(True)
    loc_bias = alm.loc_bias.detach().clone().requires_grad_(True)

    def logits(x, w, b):
        return functional_call(alm, {"loc_weight": w, "loc_bias": b}, (x,))[0]

    assert torch.autograd.gradcheck(logits, (x, loc_weight, loc_bias), eps=1e-6, atol=1e-5)
    logits(x, loc_weight, loc_bias).sum().backward()
    assert loc_bias.grad.abs().sum() > 0


def _region_probe(shift: float) -> float:
    """Logit of an ALM whose gate is ~1, looking at a half-size window centred at (shift, shift)."""
    alm = AttributeLocalization(channels=2, num_attributes=1, se_reduction=1, pooling="max")
    with torch.no_grad():
        alm.se_expand_weight.zero_()
        alm.se_expand_bias.fill_(-40.0)  # sigmoid ~ 0 -> gate ~ 1
        alm.loc_bias.copy_(torch.tensor([[0.0, 0.0, math.atanh(shift), math.atanh(shift)]]))
        alm.cls_weight.copy_(torch.tensor([[1.0, 0.0]]))
        alm.cls_bias.zero_()
    x = torch.zeros(1, 2, 32, 32)
    x[0, 0, 24:28, 24:28] = 1.0  # a bright spot in the bottom-right quarter
    return float(alm(x)[0])


def test_alm_pools_only_inside_its_region():
    # Window [0, 1] x [0, 1] (normalised) = pixels 16..31: samples at pixel (j + 31.5) / 2 hit the spot.
    assert _region_probe(0.5) == pytest.approx(1.0, abs=1e-6)
    # Window [-1, 0] x [-1, 0] = pixels 0..15: the spot is outside.
    assert _region_probe(-0.5) == pytest.approx(0.0, abs=1e-6)
