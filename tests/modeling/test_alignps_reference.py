"""The AlignPS branch's losses against numbers produced by the AlignPS reference code itself.

tests/fixtures/alignps_head_reference.pt holds a fixed small input (5 levels, 2 images, 72-d maps,
a lookup table with two known identities and a 3-row queue) and what the reference heads'
``loss()`` returned on it, plus the memories after its backward (which updates them). Its
``provenance`` entry names the repository, commit, files and lines. The reference's
ROI-AlignPS head (``roi_alignps``) is what Base-ROI-AlignPS.yaml follows; the AlignPS-alone head
(``alignps``) differs only in OIM's divisor (every positive location).
"""
import os

import pytest
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from galw.modeling.alignps import AlignPSBranch, BatchHardTripletLoss, assign_targets, level_points
from galw.modeling.oim import OIMLoss

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "alignps_head_reference.pt")
#: The reference's regress ranges: P3 with every size, P4..P7 negatives only (range (-2, -1)).
REF_REGRESS_RANGES = [[-1.0, 1e8]] + [[-2.0, -1.0]] * 4
#: The same as the branch's options: one real level owning every size and four negative-only levels.
REF_SIZE_RANGES, REF_NEGATIVE_LEVELS = [[-1.0, 1e8]], 4


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def _branch(ref, queue_channels=64, triplet_with_lut=True):
    x = ref["inputs"]
    oim = OIMLoss(x["feat_dim"], x["num_labeled"], x["queue_size"], 0.5, 10.0, focal_gamma=2.0, renormalize=False,
                  queue_channels=queue_channels)
    oim.lookup_table[x["lookup_table_ids"]] = x["lookup_table_rows"]
    oim.unlabeled_queue[: len(x["queue_rows"])] = x["queue_rows"]
    oim.queue_head.fill_(x["queue_tail"])
    return AlignPSBranch(
        in_features=["res3", "res4"], res5=nn.Identity(), afa=nn.Identity(), head=nn.Identity(), oim=oim,
        triplet=BatchHardTripletLoss(0.3), strides=x["strides"], size_ranges=REF_SIZE_RANGES,
        negative_levels=REF_NEGATIVE_LEVELS, center_radius=1.5,
        focal_alpha=0.25, focal_gamma=2.0, triplet_with_lut=triplet_with_lut, score_thresh=0.05, pre_nms_topk=1000,
        nms_thresh=0.5, max_detections=100, embed_pooling="center",
    ).train()


def _losses(ref, branch):
    x = ref["inputs"]
    gts = []
    for boxes, pids in zip(x["gt_boxes"], x["gt_pids"]):
        inst = Instances(tuple(x["image_size"]))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_pids = pids
        gts.append(inst)
    dists = [d * s for d, s in zip(x["dists_in_strides"], x["strides"])]  # the reference regresses in strides
    return branch.losses(list(x["maps"]), list(x["logits"]), dists, list(x["ctr_logits"]), gts)


KEYS = {"loss_aps_cls": "loss_cls", "loss_aps_box": "loss_bbox", "loss_aps_ctr": "loss_centerness",
        "loss_aps_oim": "loss_oim", "loss_aps_tri": "loss_tri"}


def test_roi_alignps_head_losses_match_reference(ref):
    out = _losses(ref, _branch(ref))
    for ours, theirs in KEYS.items():
        assert float(out[ours]) == pytest.approx(ref["roi_alignps"]["losses"][theirs], rel=1e-5, abs=1e-6), ours


def test_alignps_head_oim_divides_by_every_positive(ref):
    """AlignPS alone: the same losses but OIM's sum is divided by every positive location, labeled or not
    (MODEL.ALIGNPS.OIM_NORMALIZER "all"); the ratio of the two reference numbers is exactly that count ratio."""
    x = ref["inputs"]
    points = level_points([m.shape[-2:] for m in x["maps"]], x["strides"])
    labeled = positives = 0
    for boxes, pids in zip(x["gt_boxes"], x["gt_pids"]):
        matched, _ = assign_targets(points, x["strides"], REF_REGRESS_RANGES, boxes, 1.5)
        positives += int((matched >= 0).sum())
        labeled += int((pids[matched[matched >= 0]] >= 0).sum())
    assert 0 < labeled < positives
    theirs, roi = ref["alignps"]["losses"], ref["roi_alignps"]["losses"]
    assert theirs["loss_oim"] == pytest.approx(roi["loss_oim"] * labeled / positives, rel=1e-5)
    assert all(theirs[k] == roi[k] for k in ("loss_cls", "loss_bbox", "loss_centerness", "loss_tri"))


def test_memories_after_update_match_reference(ref):
    """Lookup-table rows (running average, not renormalised) and the queue (first 64 channels only)."""
    branch = _branch(ref)
    _losses(ref, branch)
    oim = branch.oim
    assert torch.allclose(oim.lookup_table[[1, 2, 3]], ref["roi_alignps"]["lookup_table_rows"], atol=1e-6)
    queue = ref["roi_alignps"]["queue_rows"]
    assert int(oim.queue_head) == ref["roi_alignps"]["queue_tail"] == 9
    assert torch.allclose(oim.unlabeled_queue[: len(queue)], queue, atol=1e-6)
    assert queue[3:9, 64:].abs().sum() == 0 and queue[3:9, :64].abs().sum() > 0


def test_whole_feature_queue_differs_from_reference(ref):
    branch = _branch(ref, queue_channels=0)
    _losses(ref, branch)
    assert branch.oim.unlabeled_queue[3:9, 64:].abs().sum() > 0


def test_triplet_lut_rows_one_per_location_unnormalised(ref):
    """The former construction (unique identities, unseen rows dropped, rows renormalised) misses the reference."""
    branch = _branch(ref)
    out = _losses(ref, branch)
    assert float(out["loss_aps_tri"]) == pytest.approx(ref["roi_alignps"]["losses"]["loss_tri"], rel=1e-5)
    x = ref["inputs"]
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tri = BatchHardTripletLoss(0.3)
    # hand check of the construction: a zero (never updated) row of identity 3 sits at the origin
    pids = torch.tensor([1, 3])
    rows = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    loss = tri(torch.cat([feats, rows]), torch.cat([pids, pids]), normalize=False)
    # hinge d_ap - d_an + 0.3 per anchor: f1 0.5 - 1 -> 0; f3 1 - sqrt(1.25) + 0.3; row1 0.5 - 0.5 + 0.3; row3 1 - 0.5 + 0.3
    assert float(loss) == pytest.approx((0.0 + (1.3 - 1.25 ** 0.5) + 0.3 + 0.8) / 4, abs=1e-5)
    assert x["feat_dim"] == 72


def test_identity_zero_rows_join_the_triplet():
    """Labels are 0-based (the reference's own table update counts label >= 0); the reference's row pick
    ``pid > 0`` (labeled_matching_layer_queue.py:18) leaves identity 0 out: here it joins like the others."""
    oim = OIMLoss(2, 2, 0, focal_gamma=2.0, renormalize=False)
    oim.lookup_table.copy_(torch.tensor([[0.0, 0.6], [0.6, 0.0]]))
    branch = AlignPSBranch(
        in_features=["res3", "res4"], res5=nn.Identity(), afa=nn.Identity(), head=nn.Identity(), oim=oim,
        triplet=BatchHardTripletLoss(0.3), strides=[8], size_ranges=[[-1.0, 1e8]], center_radius=1.5,
        focal_alpha=0.25, focal_gamma=2.0, triplet_with_lut=True, score_thresh=0.05, pre_nms_topk=1000,
        nms_thresh=0.5, max_detections=100, embed_pooling="center",
    )
    feats, pids = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    with_rows = branch._triplet_loss(feats, pids)
    expected = BatchHardTripletLoss(0.3)(torch.cat([feats, oim.lookup_table]), torch.tensor([0, 1, 0, 1]), normalize=False)
    assert float(with_rows) == pytest.approx(float(expected), abs=1e-6)
    without_zero = BatchHardTripletLoss(0.3)(torch.cat([feats, oim.lookup_table[1:]]), torch.tensor([0, 1, 1]), normalize=False)
    assert float(with_rows) != pytest.approx(float(without_zero), abs=1e-3)
