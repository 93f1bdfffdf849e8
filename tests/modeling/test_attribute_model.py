"""ROI-AlignPS*-Attr: the attribute branch beside NAE and AlignPS on one trunk, from the synthetic config.

Eleven task losses (t1..t11) with distinct keys train on a tiny batch; at inference the attribute
branch gives probabilities for the detector's boxes through ``predict_attributes``.
"""
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import galw
from alignps_helpers import SYNTH_NUM_PIDS, SYNTH_PEOPLE, synthetic_batch
from conftest import CONFIG_DIR, ROI_ALIGNPS_ATTR_TASKS, train_losses

CONFIG = os.path.join(CONFIG_DIR, "attr", "roi_alignps_attr_R18_synth_cpu.yaml",
)
ELEVEN_TASKS = set(ROI_ALIGNPS_ATTR_TASKS)
# Per person: [wears colour of id 0, unlabeled passer-by, unknown]; the last one is always -1.
ATTRIBUTES = {0: [1, 0, -1], 1: [0, 0, -1], 2: [0, 0, -1], -1: [0, 1, -1]}


def attribute_batch():
    batch = synthetic_batch()
    for item, people in zip(batch, SYNTH_PEOPLE):
        item["instances"].gt_attributes = torch.tensor([ATTRIBUTES[pid] for _, pid in people], dtype=torch.int64)
    return batch


@pytest.fixture(scope="module")
def trained_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops on a shared CPU
    try:
        torch.manual_seed(0)
        cfg = get_cfg()
        galw.add_galw_config(cfg)
        cfg.merge_from_file(CONFIG)
        cfg.merge_from_list([
            "DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.OIM.NUM_LABELED", SYNTH_NUM_PIDS,
            "MODEL.ALIGNPS.FPN_CHANNELS", 32, "MODEL.ALIGNPS.NUM_CONVS", 1, "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16,
            "MODEL.NAE.EMBEDDING_DIM", 32, "MODEL.OIM.QUEUE_SIZE", 16,
            # 8 steps leave AlignPS scores near its 0.01 prior: keep every box for the inference tests.
            "MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.0,
            "MODEL.ATTRIBUTE.NUM_ATTRIBUTES", 3, "MODEL.ATTRIBUTE.CONV_DIM", 16, "MODEL.ATTRIBUTE.POOLER_RESOLUTION", 16,
        ])
        model = build_model(cfg)
        model.train()
        batch = attribute_batch()
        history = train_losses(lambda: model(batch), model.parameters(), steps=8, lr=0.01)
        model.eval()
        yield model, history
    finally:
        torch.set_num_threads(threads)


def test_eleven_tasks_and_the_attribute_loss_falls(trained_model):
    model, history = trained_model
    assert set(history[0]) == ELEVEN_TASKS
    attr = torch.tensor([h["loss_attr"] for h in history])
    assert torch.isfinite(attr).all()
    assert attr[-2:].mean() < attr[:2].mean(), attr.tolist()
    # The attribute branch reads the shared res3/res4 and owns no res5.
    branch = model.branches["AttributeBranch"]
    assert branch.in_features == ["res3", "res4"]
    assert not any(n.endswith("res5") for n, _ in branch.named_modules())


def test_predict_attributes_on_the_detectors_boxes(trained_model):
    model, _ = trained_model
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in attribute_batch()]
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        detections = model.branches[model.detector].detect(images, features)
        probs = model.branches["AttributeBranch"].predict_attributes(
            images, features, [d.pred_boxes for d in detections]
        )
    assert [tuple(p.shape) for p in probs] == [(len(d), 3) for d in detections]
    allp = torch.cat(probs)
    assert bool((allp >= 0).all()) and bool((allp <= 1).all())


def test_model_outputs_attribute_probs_in_original_coordinates(trained_model):
    """The meta-arch fills ``attribute_probs`` from ``predict_attributes`` (eval contract)."""
    model, _ = trained_model
    batch = []
    for x in attribute_batch():
        # Original size twice the input size: boxes are rescaled, probabilities follow their boxes.
        batch.append({"image": x["image"], "height": 2 * x["height"], "width": 2 * x["width"]})
    with torch.no_grad():
        outputs = model(batch)
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        detections = model.branches[model.detector].detect(images, features)
        expected = model.branches["AttributeBranch"].predict_attributes(
            images, features, [d.pred_boxes for d in detections]
        )
    assert sum(len(o["instances"]) for o in outputs) > 0
    for out, det, probs in zip(outputs, detections, expected):
        inst = out["instances"]
        assert inst.has("attribute_probs") and inst.attribute_probs.shape == (len(inst), 3)
        keep = det.pred_boxes.nonempty()
        assert torch.allclose(inst.attribute_probs, probs[keep])
        assert torch.allclose(inst.pred_boxes.tensor, det.pred_boxes.tensor[keep] * 2, atol=1e-4)
