"""TEST.PERSON_SEARCH.EMBEDDING on a tiny ROI-AlignPS*: the NAE embedding of AlignPS's boxes
("embedder"), AlignPS's own ("detector") or both ("concat"), the three the ROI-AlignPS reference
scores (AlignPS tools/test_results_psd.py:99,139,158 and tools/test_results_psd_prw.py:151-161)."""
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F

import galw
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from alignps_helpers import SYNTH_NUM_PIDS, synthetic_batch
from conftest import CONFIG_DIR

NAE_DIM, APS_DIM = 16, 32


def _cfg(config="alignps/roi_alignps_R18_synth_cpu.yaml", embedding="embedder"):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config))
    cfg.merge_from_list([
        "DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.OIM.NUM_LABELED", SYNTH_NUM_PIDS,
        "MODEL.NAE.EMBEDDING_DIM", NAE_DIM, "MODEL.OIM.QUEUE_SIZE", 16,
        "TEST.PERSON_SEARCH.EMBEDDING", embedding,
    ])
    if "AlignPSBranch" in cfg.MODEL.PERSON_SEARCH.BRANCHES:
        cfg.merge_from_list(["MODEL.ALIGNPS.FPN_CHANNELS", APS_DIM, "MODEL.ALIGNPS.NUM_CONVS", 1,
                             "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16, "MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.0])
    return cfg


def _inputs():
    g, q = synthetic_batch(seed=1)
    gallery = {"image": g["image"], "height": 96, "width": 128, "image_id": 0}
    query_inst = Instances((96, 128))
    query_inst.gt_boxes = Boxes(torch.tensor([[52.0, 20.0, 76.0, 84.0]]))
    query = {"image": q["image"], "height": 96, "width": 128, "image_id": 1, "query_instances": query_inst}
    return [gallery, query]


@pytest.fixture(scope="module")
def runs():
    """Each choice on the same weights and inputs: (model, outputs) per choice."""
    out = {}
    for embedding in ("embedder", "detector", "concat"):
        torch.manual_seed(0)
        model = build_model(_cfg(embedding=embedding)).eval()
        with torch.no_grad():
            out[embedding] = (model, model(_inputs()))
    return out


def _unit(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)


def test_each_choice_has_its_dimension_and_unit_norm(runs):
    dims = {"embedder": NAE_DIM, "detector": APS_DIM, "concat": NAE_DIM + APS_DIM}
    boxes = runs["embedder"][1][0]["instances"].pred_boxes.tensor
    assert len(boxes) > 0
    for embedding, (model, outputs) in runs.items():
        assert model.embedding == embedding
        gallery, query = outputs
        emb = gallery["instances"].embeddings
        assert emb.shape == (len(boxes), dims[embedding]) and _unit(emb), embedding
        assert torch.equal(gallery["instances"].pred_boxes.tensor, boxes), embedding  # AlignPS's boxes every time
        assert query["query_embedding"].shape == (dims[embedding],) and _unit(query["query_embedding"]), embedding


def test_detector_choice_is_alignps_own_detection_embedding(runs):
    model, outputs = runs["detector"]
    gallery = _inputs()[:1]
    images = model.preprocess_image(gallery)
    with torch.no_grad():
        own = model.branches["AlignPSBranch"].detect(images, model.backbone(images.tensor))[0]
    diff = (outputs[0]["instances"].embeddings - own.embeddings).abs().max().item()
    assert diff < 1e-4, diff


def test_concat_is_both_parts_each_normalised_then_over_sqrt2(runs):
    _, concat = runs["concat"]
    _, nae = runs["embedder"]
    _, aps = runs["detector"]
    for key in ("gallery", "query"):
        if key == "gallery":
            both, a, n = (o[0]["instances"].embeddings for o in (concat, aps, nae))
        else:
            both, a, n = (o[1]["query_embedding"] for o in (concat, aps, nae))
        assert torch.allclose(both[..., :APS_DIM] * math.sqrt(2), F.normalize(a, dim=-1), atol=1e-5), key
        assert torch.allclose(both[..., APS_DIM:] * math.sqrt(2), F.normalize(n, dim=-1), atol=1e-5), key
    # similarities are the mean of the two parts' cosine similarities (the CUHK-SYSU script's)
    q = concat[1]["query_embedding"]
    g = concat[0]["instances"].embeddings
    mean = (aps[0]["instances"].embeddings @ aps[1]["query_embedding"]
            + nae[0]["instances"].embeddings @ nae[1]["query_embedding"]) / 2
    assert torch.allclose(g @ q, mean, atol=1e-5)


def test_the_model_logs_its_embedding(caplog):
    with caplog.at_level(logging.INFO, logger="galw.modeling.meta_arch"):
        build_model(_cfg(embedding="concat"))
    assert "AlignPSBranch's and NAEBranch's embeddings" in caplog.text
    assert "TEST.PERSON_SEARCH.EMBEDDING = concat" in caplog.text


def test_concat_needs_two_branches_and_a_known_choice():
    with pytest.raises(ValueError, match="DETECTOR and EMBEDDER apart"):
        build_model(_cfg("nae/nae_R18_synth_cpu.yaml", embedding="concat"))
    with pytest.raises(ValueError, match="expected one of"):
        build_model(_cfg(embedding="nae"))
