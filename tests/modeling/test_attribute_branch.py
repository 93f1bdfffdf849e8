"""The attribute branch: masked BCE, loss wiring, config checks, training to accuracy, inference output."""
import math

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from attribute_helpers import SHAPES, attribute_scene, instances, small_branch, small_cfg
from galw.modeling import build_branch
from galw.modeling.attribute import masked_attribute_bce


def test_masked_bce_hand_computed():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]], requires_grad=True)
    targets = torch.tensor([[1, -1], [0, 1]])
    loss = masked_attribute_bce(logits, targets)
    # Known: (0 -> 1): log 2; (-1 -> 0): log(1 + e^-1); (3 -> 1): log(1 + e^-3). Mean of three.
    expected = (math.log(2.0) + math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-3.0))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dz of BCE = sigmoid(z) - y, divided by the 3 known labels; the unknown one gets nothing.
    sig = torch.sigmoid(logits.detach())
    expected_grad = torch.tensor([[sig[0, 0] - 1, 0.0], [sig[1, 0] - 0, sig[1, 1] - 1]]) / 3
    assert torch.allclose(logits.grad, expected_grad, atol=1e-7)


def test_masked_bce_all_unknown_is_a_zero_that_keeps_the_graph():
    logits = torch.tensor([[0.3, -2.0], [1.0, 5.0]], requires_grad=True)
    loss = masked_attribute_bce(logits, torch.full((2, 2), -1))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 2))


def test_masked_bce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        masked_attribute_bce(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.long))


def test_branch_loss_is_the_masked_bce_summed_over_its_predictions():
    torch.manual_seed(0)
    branch = small_branch(num_attributes=3)
    feats, _ = attribute_scene(torch.Generator().manual_seed(0), num_images=2, num_attributes=3)
    gts = [
        instances([[10, 10, 50, 100], [60, 20, 100, 120]], [[1, -1, 0], [-1, -1, 1]]),
        instances([[5, 30, 45, 125]], [[0, 1, -1]]),
    ]
    with EventStorage() as storage:
        losses = branch(None, feats, gts)
        assert set(losses) == {"loss_attr"}
        assert "attr/accuracy" in storage.latest()
    heads = branch.attribute_logits(feats, [g.gt_boxes for g in gts])
    assert len(heads) == 1 + len(SHAPES)  # the main classifier and one ALM set per level
    targets = torch.cat([g.gt_attributes for g in gts])
    expected = sum(masked_attribute_bce(h, targets) for h in heads)
    assert losses["loss_attr"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_branch_all_unknown_gives_zero_loss_and_zero_gradients():
    torch.manual_seed(0)
    branch = small_branch(num_attributes=3)
    feats, _ = attribute_scene(torch.Generator().manual_seed(1), num_images=1, num_attributes=3)
    gts = [instances([[10, 10, 50, 100], [60, 20, 100, 120]], [[-1, -1, -1]] * 2)]
    with EventStorage():
        loss = branch(None, feats, gts)["loss_attr"]
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in branch.parameters()]
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_branch_without_boxes_gives_zero_loss_on_every_parameter():
    branch = small_branch(num_attributes=2)
    feats, _ = attribute_scene(torch.Generator().manual_seed(2), num_images=2, num_attributes=2)
    gts = [instances(torch.zeros(0, 4), torch.zeros(0, 2)) for _ in range(2)]
    with EventStorage():
        loss = branch(None, feats, gts)["loss_attr"]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in branch.parameters())


def test_branch_rejects_bad_labels():
    branch = small_branch(num_attributes=2)
    feats, _ = attribute_scene(torch.Generator().manual_seed(3), num_images=1, num_attributes=2)
    with EventStorage():
        with pytest.raises(ValueError, match=r"gt_attributes may hold only 0, 1 and -1.*\[2\]"):
            branch(None, feats, [instances([[10, 10, 50, 100]], [[1, 2]])])
        with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
            branch(None, feats, [instances([[10, 10, 50, 100]], [[1, 0, 1]])])
        bare = instances([[10, 10, 50, 100]], [[1, 0]])
        bare.remove("gt_attributes")
        with pytest.raises(ValueError, match="no 'gt_attributes'.*attributes.json in the dataset root"):
            branch(None, feats, [bare])


def test_config_checks_and_num_attributes_from_metadata():
    with pytest.raises(ValueError, match=r"IN_FEATURES names \['res5'\]"):
        build_branch("AttributeBranch", small_cfg(IN_FEATURES=["res3", "res5"]), SHAPES)
    name = "galw_test_attribute_meta"
    cfg = small_cfg(num_attributes=0)
    cfg.DATASETS.TRAIN = (name,)
    with pytest.raises(ValueError, match=f"metadata of '{name}' has no 'attribute_names'"):
        build_branch("AttributeBranch", cfg, SHAPES)
    MetadataCatalog.get(name).set(attribute_names=["hat", "bag", "backpack"])
    try:
        assert build_branch("AttributeBranch", cfg, SHAPES).num_attributes == 3
    finally:
        MetadataCatalog.remove(name)


def test_num_attributes_from_a_train_set_not_loaded_yet():
    """As the data part does, the loader sets ``attribute_names``; building the branch triggers it."""
    name = "galw_test_attribute_lazy"

    def load():
        MetadataCatalog.get(name).set(attribute_names=["hat", "bag", "long_sleeves", "backpack", "skirt"])
        return []

    DatasetCatalog.register(name, load)
    cfg = small_cfg(num_attributes=0)
    cfg.DATASETS.TRAIN = (name,)
    try:
        assert build_branch("AttributeBranch", cfg, SHAPES).num_attributes == 5
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_predict_attributes_shapes_and_range():
    torch.manual_seed(0)
    branch = small_branch(num_attributes=4).eval()
    feats, _ = attribute_scene(torch.Generator().manual_seed(4), num_images=3, num_attributes=4)
    boxes = [Boxes(torch.tensor([[10.0, 10, 50, 100], [0, 0, 128, 128]])), Boxes(torch.zeros(0, 4)),
             Boxes(torch.tensor([[30.0, 40, 70, 120]]))]
    probs = branch.predict_attributes(None, feats, boxes)
    assert [tuple(p.shape) for p in probs] == [(2, 4), (0, 4), (1, 4)]
    allp = torch.cat(probs)
    assert bool((allp >= 0).all()) and bool((allp <= 1).all())
    # The probability is the sigmoid of the largest logit over the predictions.
    heads = torch.stack(branch.attribute_logits(feats, boxes))
    assert torch.allclose(allp, torch.sigmoid(heads.amax(dim=0)))
    empty = branch.predict_attributes(None, feats, [Boxes(torch.zeros(0, 4))] * 3)
    assert [tuple(p.shape) for p in empty] == [(0, 4)] * 3
    with pytest.raises(NotImplementedError, match="does not detect"):
        branch.detect(None, feats)


def test_training_reaches_high_attribute_accuracy():
    """A short training on attribute-bearing feature maps: accuracy on new boxes far above chance (0.5).

    16 x 16 crops instead of the paper's 32 x 32 and one intra-op thread (many small ops)
    keep the test fast on a shared CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accuracy = _train_and_evaluate()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.9, f"attribute accuracy {accuracy:.3f} on held-out boxes after training (chance 0.5)"


def _train_and_evaluate():
    """Train a small branch for 160 steps on fresh scenes; its accuracy on 32 unseen boxes."""
    torch.manual_seed(0)
    branch = small_branch(num_attributes=4, POOLER_RESOLUTION=16)
    train_gen = torch.Generator().manual_seed(10)
    optimizer = torch.optim.Adam(branch.parameters(), lr=1e-2)
    with EventStorage():
        for _ in range(160):
            feats, gts = attribute_scene(train_gen, num_images=6)
            loss = branch(None, feats, gts)["loss_attr"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    branch.eval()
    feats, gts = attribute_scene(torch.Generator().manual_seed(99), num_images=16)
    probs = torch.cat(branch.predict_attributes(None, feats, [g.gt_boxes for g in gts]))
    targets = torch.cat([g.gt_attributes for g in gts])
    return ((probs > 0.5).long() == targets).float().mean().item()
