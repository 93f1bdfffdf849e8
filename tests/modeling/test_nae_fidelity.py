"""The NAE branch as the references: ROI sampling (bg IoU < 0.1, 0.1-0.5 ignored), a box
regressor starting near zero deltas, and score-weighted gallery embeddings (CWS)."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from nae_helpers import synthetic_batch, tiny_nae_cfg

FAST = ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4, "MODEL.BACKBONE.FREEZE_AT", 3)


def _model(*opts):
    torch.manual_seed(0)
    return build_model(tiny_nae_cfg(*FAST, *opts))


def test_roi_sampling_background_below_0_1_ignores_0_1_to_0_5():
    heads = _model("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64).branches["NAEBranch"].roi_heads
    assert heads.proposal_matcher.thresholds[1:-1] == [0.1, 0.5]
    gt = Instances((100, 100))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0, 40, 40]]))
    gt.gt_classes = torch.zeros(1, dtype=torch.int64)
    gt.gt_pids = torch.tensor([2])
    proposals = Instances((100, 100))
    # IoU with the gt box: 0 (far), 0.05, 0.3, 0.7
    proposals.proposal_boxes = Boxes(torch.tensor([
        [60.0, 60, 90, 90], [36.0, 0, 76, 40], [20.0, 0, 60, 40], [0.0, 0, 40, 28],
    ]))
    proposals.objectness_logits = torch.zeros(4)
    with EventStorage():
        sampled = heads.label_and_sample_proposals([proposals], [gt])[0]
    by_x1 = {float(b[0]): (int(c), int(p)) for b, c, p in
             zip(sampled.proposal_boxes.tensor, sampled.gt_classes, sampled.gt_pids)}
    assert by_x1[60.0][0] == 1 and by_x1[36.0][0] == 1  # background (class num_classes = 1)
    assert 20.0 not in by_x1  # IoU 0.3: neither background nor person, never sampled
    assert by_x1[0.0] == (0, 2)  # IoU 0.7 and the appended gt box: person with its identity


def test_roi_sampling_old_reading_labels_0_3_background():
    heads = _model("MODEL.ROI_HEADS.IOU_THRESHOLDS", [0.5], "MODEL.ROI_HEADS.IOU_LABELS", [0, 1]).branches[
        "NAEBranch"].roi_heads
    assert heads.proposal_matcher.thresholds[1:-1] == [0.5]


@pytest.mark.parametrize("std", [0.01, 0.001])
def test_box_regressor_starts_near_zero_deltas(std):
    model = _model("MODEL.NAE.BOX_PREDICTOR_INIT_STD", std).train()
    linear, bn = model.branches["NAEBranch"].roi_heads.box_predictor
    for w in (linear.weight, bn.weight):
        assert w.std().item() == pytest.approx(std, rel=0.6) and w.abs().max().item() < 6 * std
    assert linear.bias.abs().max() == 0 and bn.bias.abs().max() == 0
    # a BatchNorm1d weight of 1 (the old init) made the initial deltas' std ~1
    x = torch.randn(64, linear.in_features)
    assert model.branches["NAEBranch"].roi_heads.box_predictor(x).std().item() < 10 * std


def test_gallery_embeddings_weighted_by_score():
    for weighted in (True, False):
        model = _model("MODEL.NAE.SCORE_WEIGHTED_EMBEDDINGS", weighted)
        with EventStorage():
            model(synthetic_batch())  # BatchNorm statistics
        model.eval()
        item = dict(synthetic_batch()[0])
        item.pop("instances")
        inst = model([item])[0]["instances"]
        assert len(inst) > 0
        expected = inst.scores if weighted else torch.ones(len(inst))
        assert torch.allclose(inst.embeddings.norm(dim=1), expected, atol=1e-5)


def test_box_regressor_learns_on_fixed_proposals():
    """With the near-zero init the ROI box loss falls on a fixed proposal set (the whole-model overfit
    test's loss_nae_box also moves with the RPN's proposals, its normaliser and its targets)."""
    model = _model("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16).train()
    heads = model.branches["NAEBranch"].roi_heads
    torch.manual_seed(0)
    features = {"res4": torch.randn(1, heads.res5[0].conv1.in_channels, 6, 8)}
    gt = Instances((96, 128))
    gt.gt_boxes = Boxes(torch.tensor([[10.0, 14, 34, 70], [52.0, 20, 76, 84]]))
    gt.gt_classes = torch.zeros(2, dtype=torch.int64)
    gt.gt_pids = torch.tensor([0, 1])
    proposals = Instances((96, 128))
    jitter = torch.tensor([[3.0, -4, 2, 5], [-2.0, 3, -3, -4], [4.0, 2, 4, -3], [-3.0, -2, -2, 4]])
    proposals.proposal_boxes = Boxes(torch.cat([gt.gt_boxes.tensor[i % 2][None] + jitter[i][None] for i in range(4)]
                                               + [torch.tensor([[90.0, 2, 126, 40]])]))
    proposals.objectness_logits = torch.zeros(5)
    opt = torch.optim.SGD([p for p in heads.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    history = []
    with EventStorage():
        for _ in range(25):
            torch.manual_seed(1)  # the same sampling every step
            loss = heads.losses(features, [proposals], [gt])["loss_nae_box"]
            history.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5, history
