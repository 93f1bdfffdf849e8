"""AlignPS building blocks on hand-computed values: target assignment, GIoU, centerness,
batch-hard triplet, and the AFA neck (shapes, deformable offsets receive gradients)."""
import math

import pytest
import torch

from galw.modeling.alignps import (
    AFAFPN,
    BatchHardTripletLoss,
    assign_targets,
    centerness_target,
    level_points,
    weighted_giou_loss,
)

FCOS_RANGES = [[-1.0, 64.0], [64.0, 128.0], [128.0, 1e8]]
STRIDES = [8, 16, 32]


def _points(img=512):
    return level_points([(img // s, img // s) for s in STRIDES], STRIDES)


def _positives_per_level(matched, points):
    counts, start = [], 0
    for p in points:
        counts.append(int((matched[start : start + p.shape[0]] >= 0).sum()))
        start += p.shape[0]
    return counts


def test_level_points_are_cell_centres():
    (p,) = level_points([(2, 3)], [8])
    assert p.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_center_sampling_single_level():
    # 64x64 image, P3 only owning every size (the AlignPS setting). Box centre (32, 24),
    # centre region half-side 1.5 * 8 = 12 -> x in (20, 44), y in (12, 36): points x 28, 36; y 20, 28.
    points = level_points([(8, 8)], [8])
    box = torch.tensor([[8.0, 8.0, 56.0, 40.0]])
    matched, ltrb = assign_targets(points, [8], [[-1, 1e8]], box, center_radius=1.5)
    fg = torch.nonzero(matched >= 0).squeeze(1).tolist()
    assert fg == [2 * 8 + 3, 2 * 8 + 4, 3 * 8 + 3, 3 * 8 + 4]
    assert ltrb[2 * 8 + 3].tolist() == [20.0, 12.0, 28.0, 20.0]  # point (28, 20)
    assert ltrb[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    # Without center sampling (huge radius) every point strictly inside the box is positive:
    # x in {12..52} (6 values), y in {12..36} (4 values).
    matched_all, _ = assign_targets(points, [8], [[-1, 1e8]], box, center_radius=100.0)
    assert int((matched_all >= 0).sum()) == 24


@pytest.mark.parametrize(
    "box, expected",
    [
        # small 32x48 at (100, 100): max distance <= 32 on P3 -> 9 P3 positives only
        ([84.0, 76.0, 116.0, 124.0], [9, 0, 0]),
        # medium 80x200 at (256, 256): P3 points see 104 > 64; P4 points 108 in [64, 128]; P5 116 < 128
        ([216.0, 156.0, 296.0, 356.0], [0, 4, 0]),
        # large 200x400 at (256, 256): only P5 points (max distance 216) are in range
        ([156.0, 56.0, 356.0, 456.0], [0, 0, 4]),
    ],
)
def test_fpn_level_owns_box_size(box, expected):
    points = _points()
    matched, _ = assign_targets(points, STRIDES, FCOS_RANGES, torch.tensor([box]), center_radius=1.5)
    assert _positives_per_level(matched, points) == expected


def test_ambiguous_location_goes_to_smaller_box():
    points = _points()
    boxes = torch.tensor([[156.0, 56.0, 356.0, 456.0], [216.0, 156.0, 296.0, 356.0], [84.0, 76.0, 116.0, 124.0]])
    matched, _ = assign_targets(points, STRIDES, [[-1, 1e8]] * 3, boxes, center_radius=1.5)
    # P3 point (252, 252) is in the centre regions of both the large and the medium box.
    idx = (252 - 4) // 8 * 64 + (252 - 4) // 8
    assert matched[idx].item() == 1
    matched, _ = assign_targets(points, STRIDES, FCOS_RANGES, boxes, center_radius=1.5)
    assert _positives_per_level(matched, points) == [9, 4, 4]
    assert sorted(matched[matched >= 0].unique().tolist()) == [0, 1, 2]


def test_no_boxes_gives_background():
    points = _points(64)
    matched, ltrb = assign_targets(points, STRIDES, FCOS_RANGES, torch.zeros((0, 4)), 1.5)
    assert (matched == -1).all() and ltrb.abs().sum() == 0


def test_size_ranges_must_match_levels():
    with pytest.raises(ValueError, match="SIZE_RANGES"):
        assign_targets(_points(64), STRIDES, [[-1, 1e8]], torch.tensor([[0.0, 0, 8, 8]]), 1.5)


def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]])
    # pair 0: IoU 1/7, enclosing area 9, GIoU = 1/7 - 2/9; pair 1 identical: loss 0
    giou0 = 1 / 7 - 2 / 9
    loss = weighted_giou_loss(pred, target, torch.tensor([0.5, 1.0]), normalizer=1.5)
    assert loss.item() == pytest.approx(0.5 * (1 - giou0) / 1.5, abs=1e-6)
    assert (1 - giou0) == pytest.approx(1.0793651, abs=1e-6)


def test_centerness_hand_values():
    ltrb = torch.tensor([[2.0, 4.0, 8.0, 1.0], [5.0, 5.0, 5.0, 5.0], [1.0, 3.0, 3.0, 1.0]])
    # sqrt(2/8 * 1/4) = 0.25; centre = 1; sqrt(1/3 * 1/3) = 1/3
    assert centerness_target(ltrb).tolist() == pytest.approx([0.25, 1.0, 1 / 3], abs=1e-6)


def test_batch_hard_triplet_hand_batch():
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [0.8, 0.6]])
    pids = torch.tensor([0, 0, 1, 1, -1])  # the unlabeled sample must not act as a negative
    # anchors 0 and 3: d_ap sqrt(.8), d_an sqrt(.4); anchors 1 and 2: d_ap sqrt(.8), d_an sqrt(.08)
    a = math.sqrt(0.8) - math.sqrt(0.4) + 0.3
    b = math.sqrt(0.8) - math.sqrt(0.08) + 0.3
    loss = BatchHardTripletLoss(margin=0.3)(feats, pids)
    assert loss.item() == pytest.approx((a + b) / 2, abs=1e-5)
    # features are L2-normalised inside: scaling changes nothing
    assert BatchHardTripletLoss(0.3)(feats * 3, pids).item() == pytest.approx(loss.item(), abs=1e-5)


def test_triplet_single_identity_is_zero_but_connected():
    feats = torch.randn(4, 8, requires_grad=True)
    loss = BatchHardTripletLoss(0.3)(feats, torch.tensor([2, 2, -1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert feats.grad is not None


def test_afa_shapes_and_offsets_learn():
    torch.manual_seed(0)
    afa = AFAFPN([8, 16, 32], 12, num_outs=3)
    xs = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    outs = afa(xs)
    assert [tuple(o.shape) for o in outs] == [(2, 12, 16, 16), (2, 12, 8, 8), (2, 12, 4, 4)]
    # concatenation: output conv i sees (3 - i) * 12 channels
    assert [conv.conv.in_channels for conv in afa.outputs] == [36, 24, 12]
    sum(o.pow(2).mean() for o in outs).backward()
    for unit in list(afa.laterals) + list(afa.outputs):
        assert unit.offset.weight.grad.abs().sum() > 0
    # a step of SGD moves the offsets away from the plain-conv start (zero offsets)
    opt = torch.optim.SGD(afa.parameters(), lr=0.1)
    opt.step()
    assert afa.laterals[0].offset(xs[0]).abs().max() > 0
    assert len(AFAFPN([8, 16, 32], 12, num_outs=1)(xs)) == 1
    with pytest.raises(ValueError, match="num_outs"):
        AFAFPN([8, 16, 32], 12, num_outs=4)
