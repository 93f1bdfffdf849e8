"""The PersonSearch meta-architecture with the NAE branch, on CPU with a tiny synthetic batch."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from galw.modeling import PersonSearch
from nae_helpers import synthetic_batch, tiny_nae_cfg
from conftest import NAE_TASKS, train_losses

NAE_KEYS = set(NAE_TASKS)
#: Losses that must fall when the whole model overfits a tiny batch. Not loss_nae_box: with the
#: references' near-zero box init it starts at |targets| of the sampled ROIs, and as the RPN learns the
#: foreground moves from the appended GT boxes (target 0) to real proposals (targets of ~2 with weights
#: 10, 10, 5, 5), so it rises while the regressor learns (measured over 30 steps: 5.75 -> 8.96; with the
#: old 0.5 background threshold 5.12 -> 11.73). test_nae_fidelity.py shows it falling on fixed proposals.
NAE_FALLING = NAE_KEYS - {"loss_nae_box"}
# faster for tests: 4x4 ROIAlign (2x2 after res5), 8 ROIs per image, stem..res3 frozen
FAST = ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 8, "MODEL.BACKBONE.FREEZE_AT", 3)


def _model(*opts):
    torch.manual_seed(0)
    return build_model(tiny_nae_cfg(*FAST, *opts))


def test_loss_keys_and_shapes():
    model = _model().train()
    with EventStorage():
        losses = model(synthetic_batch())
    assert set(losses) == NAE_KEYS
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    # no labeled-identity memory yet: OIM logits are all 0 -> log(num_labeled + queue_size)
    assert losses["loss_nae_oim"].item() == pytest.approx(torch.log(torch.tensor(3.0 + 8.0)).item(), abs=1e-5)


@pytest.mark.slow
def test_overfit_tiny_batch_every_task_falls():
    model = _model().train()
    params = [p for p in model.parameters() if p.requires_grad]
    batch = synthetic_batch()

    def step_losses():
        torch.manual_seed(123)  # the same anchor/ROI sampling draws every step
        return model(batch)

    history = train_losses(step_losses, params, steps=30, lr=0.01)
    for key in NAE_KEYS:
        series = [h[key] for h in history]
        assert all(torch.isfinite(torch.tensor(series))), key
        if key not in NAE_FALLING:
            continue
        first, last = sum(series[:5]) / 5, sum(series[-5:]) / 5
        assert last < 0.85 * first, f"{key}: first-5 mean {first:.4f}, last-5 mean {last:.4f}"


def _query_input(batch_item, box):
    q = dict(batch_item)
    q.pop("instances")
    inst = Instances((q["height"], q["width"]))
    inst.gt_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
    inst.gt_pids = torch.tensor([0])
    q["query_instances"] = inst
    return q


def test_eval_outputs_follow_contract():
    model = _model()
    with EventStorage():  # a few steps so BatchNorm running stats are not the initial ones
        model(synthetic_batch())
    model.eval()
    batch = synthetic_batch()
    gallery = dict(batch[0])
    gallery.pop("instances")
    # original size 192x256 while the input tensor is 96x128: outputs are scaled by 2
    gallery.update(height=192, width=256)
    query = _query_input(batch[1], [14, 24, 40, 90])
    outputs = model([gallery, query])
    assert len(outputs) == 2
    inst = outputs[0]["instances"]
    assert inst.image_size == (192, 256)
    assert {"pred_boxes", "scores", "embeddings"} <= set(inst.get_fields())
    n = len(inst)
    assert n > 0 and inst.embeddings.shape == (n, 32) and inst.scores.shape == (n,)
    # confidence-weighted similarity (MODEL.NAE.SCORE_WEIGHTED_EMBEDDINGS): norm = detection score
    assert torch.allclose(inst.embeddings.norm(dim=1), inst.scores, atol=1e-5)
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    box = inst.pred_boxes.tensor
    assert (box[:, 0] >= 0).all() and (box[:, 2] <= 256).all() and (box[:, 3] <= 192).all()
    assert "query_embedding" not in outputs[0]
    q = outputs[1]
    assert q["query_embedding"].shape == (32,)
    assert q["query_embedding"].norm().item() == pytest.approx(1.0, abs=1e-5)
    assert q["instances"].image_size == (96, 128) and len(q["instances"]) > 0
    # the query embedding is the branch's embedding of exactly that box
    images = model.preprocess_image([query])
    features = model.backbone(images.tensor)
    direct = model.branches["NAEBranch"].embed(images, features, [Boxes(torch.tensor([[14.0, 24, 40, 90]]))])[0][0]
    assert torch.allclose(direct, q["query_embedding"], atol=1e-6)


def test_query_with_two_boxes_is_an_error():
    model = _model().eval()
    q = _query_input(synthetic_batch()[0], [8, 10, 34, 80])
    q["query_instances"] = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[8.0, 10, 34, 80], [50, 20, 74, 86]])))
    with pytest.raises(ValueError, match="exactly one"):
        model([q])


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    with EventStorage():
        model(synthetic_batch())  # changes BN statistics and the OIM memories
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    assert any(k.endswith("oim.lookup_table") for k in model.state_dict())
    other = _model("SEED", 1)
    torch.manual_seed(7)
    for p in other.parameters():
        p.data.normal_()
    other.load_state_dict(torch.load(path))
    for m in (model, other):
        m.eval()
    batch = synthetic_batch()
    for b in batch:
        b.pop("instances")
    a, b = model(batch), other(batch)
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)
        assert torch.equal(x["instances"].embeddings, y["instances"].embeddings)
        assert torch.equal(x["instances"].scores, y["instances"].scores)


def test_training_input_without_pids_is_an_error():
    model = _model().train()
    batch = synthetic_batch()
    batch[1]["instances"].remove("gt_pids")
    with pytest.raises(ValueError, match="synthetic_1.png.*gt_pids"):
        with EventStorage():
            model(batch)


def test_res5_in_backbone_outputs_is_an_error():
    with pytest.raises(ValueError, match="res5"):
        _model("MODEL.RESNETS.OUT_FEATURES", ["res4", "res5"])


def test_detector_must_be_a_branch():
    with pytest.raises(ValueError, match="DETECTOR"):
        _model("MODEL.PERSON_SEARCH.DETECTOR", "AlignPSBranch")


def test_loss_key_collision_raises():
    from galw.modeling.branch import PS_BRANCH_REGISTRY
    from galw.modeling.nae import NAEBranch

    name = "NAEBranchCopyForCollisionTest"
    if name not in PS_BRANCH_REGISTRY:
        PS_BRANCH_REGISTRY.register(type(name, (NAEBranch,), {}))
    model = _model("MODEL.PERSON_SEARCH.BRANCHES", ["NAEBranch", name]).train()
    with pytest.raises(KeyError, match="loss_rpn_cls.*NAEBranch.*" + name):
        with EventStorage():
            model(synthetic_batch())


def test_meta_arch_is_registered():
    assert isinstance(_model(), PersonSearch)


def test_attribute_branch_outputs_attribute_probs():
    """A branch with predict_attributes (the attribute branch's interface) fills attribute_probs."""
    from galw.modeling.branch import PS_BRANCH_REGISTRY, PersonSearchBranch

    name = "BoxWidthAttributesForTest"
    if name not in PS_BRANCH_REGISTRY:

        class BoxWidthAttributes(PersonSearchBranch):
            def __init__(self, cfg, input_shape):
                super().__init__()

            def forward(self, images, features, gt_instances=None):
                return {}

            def predict_attributes(self, images, features, boxes):
                # one "attribute": the box width over the image width, in input scale
                return [(b.tensor[:, 2:3] - b.tensor[:, 0:1]) / 128.0 for b in boxes]

        BoxWidthAttributes.__name__ = name
        PS_BRANCH_REGISTRY.register(BoxWidthAttributes)
    model = _model("MODEL.PERSON_SEARCH.BRANCHES", ["NAEBranch", name])
    with EventStorage():
        model(synthetic_batch())
    model.eval()
    item = dict(synthetic_batch()[0])
    item.pop("instances")
    item.update(height=192, width=256)  # outputs scaled by 2, attributes computed before
    inst = model([item])[0]["instances"]
    widths = inst.pred_boxes.tensor[:, 2] - inst.pred_boxes.tensor[:, 0]
    assert inst.attribute_probs.shape == (len(inst), 1)
    assert torch.allclose(inst.attribute_probs[:, 0], widths / 256.0, atol=1e-4)


def test_oracle_instances_are_embedded_like_query_boxes():
    """The GT-box oracle (TEST.PERSON_SEARCH.GT_BOX_ORACLE): a gallery input's oracle_instances get
    oracle_embeddings [M, D], each equal to the query embedding of the same box."""
    model = _model().eval()
    batch = synthetic_batch()
    gallery = dict(batch[0])
    gallery.pop("instances")
    boxes = [[14.0, 24, 40, 90], [50, 20, 74, 86]]
    gallery["oracle_instances"] = Instances((96, 128), gt_boxes=Boxes(torch.tensor(boxes)))
    out = model([gallery])[0]
    assert out["oracle_embeddings"].shape == (2, 32)
    for i, b in enumerate(boxes):
        q = model([_query_input(batch[0], b)])[0]["query_embedding"]
        assert torch.allclose(out["oracle_embeddings"][i], q, atol=1e-5)
    del gallery["oracle_instances"]
    assert "oracle_embeddings" not in model([gallery])[0]
