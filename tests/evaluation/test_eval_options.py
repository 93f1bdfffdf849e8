"""Evaluation options peers offer, off by default, on hand-built values:
CBGM re-scoring (search_CBGM), the GT-box oracle (search_GTOracle), PRW same camera (search_SameCamera)."""
import numpy as np
import pytest
import torch

import galw  # noqa: F401
from galw.evaluation import PersonSearchEvaluator
from galw.evaluation.cbgm import query_context

import eval_helpers as H

GT = [0, 0, 50, 100]
C_BOX = [100, 0, 150, 100]
QBOX = [10, 10, 60, 110]


def run(name, ios, **kwargs):
    ev = PersonSearchEvaluator(name, distributed=False, **kwargs)
    ev.reset()
    for inp, out in ios:
        ev.process([inp], [out])
    return ev.evaluate()


def cbgm_scene():
    """Query person e=[1,0,0] stands next to person C=[0,1,0] in the query image and in g0.

    g0: the positive (sim .6) and C (sim 0); g1: a distractor (sim .7). Standard: AP 1/2, top-1 miss.
    CBGM (k2 = 2: query + C): in g0 the matching pairs query-positive (.6) and C-C (1.0), so the
    positive's similarity becomes the largest matched weight, 1.0; g1 has one detection, matched to
    the query (.7), unchanged -> AP 1, top-1 hit.
    """
    gallery = [H.record("g0.jpg", 0, [H.anno(GT, 0), H.anno(C_BOX, -1)]), H.record("g1.jpg", 1, [])]
    queries = [H.query_record("q0.jpg", 100, QBOX, 0)]
    protocols = {"TestG100": [{"query_index": 0, "gallery": [{"image": "g0.jpg", "bbox": GT},
                                                             {"image": "g1.jpg", "bbox": None}]}]}
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ios = [
        H.gallery_io(gallery[0], [(GT, 0.9, [0.6, 0.0, 0.8]), (C_BOX, 0.9, [0.0, 1.0, 0.0])]),
        H.gallery_io(gallery[1], [([0, 0, 40, 80], 0.9, [0.7, 0.0, float(np.sqrt(1 - 0.49))])]),
    ]
    # Query-image detections: the query person itself (IoU > .5 with the query box, highest score),
    # C, and a low-scoring third person.
    query_dets = [(QBOX, 0.99, [1.0, 0.0, 0.0]), (C_BOX, 0.9, [0.0, 1.0, 0.0]), ([300, 0, 350, 100], 0.3, [0.0, 0.0, 1.0])]
    ios.append(H.query_io(queries[0], embedding=[1.0, 0.0, 0.0], dets=query_dets))
    return name, ios


def test_cbgm_rescoring_values():
    name, ios = cbgm_scene()
    r = run(name, ios, cuhk_protocols=(), cbgm=True, cbgm_context=2)
    assert r["search"] == pytest.approx({"mAP": 50.0, "top1": 0.0, "top5": 100.0, "top10": 100.0})
    assert r["search_CBGM"] == pytest.approx({"mAP": 100.0, "top1": 100.0, "top5": 100.0, "top10": 100.0})
    # k2 = 1: no context, the matching only pairs the query with its best detection: nothing changes.
    assert run(name, ios, cuhk_protocols=(), cbgm=True, cbgm_context=1)["search_CBGM"]["mAP"] == pytest.approx(50.0)
    # k1 = 1: only the image of the most similar detection (g1, the distractor) is re-scored.
    assert run(name, ios, cuhk_protocols=(), cbgm=True, cbgm_context=2,
               cbgm_top_detections=1)["search_CBGM"]["mAP"] == pytest.approx(50.0)
    # SeqNet's CUHK-SYSU k2 = 3 adds the third person [0,0,1]: in g0 the best matching pairs it with
    # the positive (.8) and C with C (1.0), 1.8 > 1.6, so the query is unmatched and nothing changes.
    assert run(name, ios, cuhk_protocols=(), cbgm=True)["search_CBGM"]["mAP"] == pytest.approx(50.0)


def test_cbgm_is_off_by_default_and_needs_query_detections():
    name, ios = cbgm_scene()
    r = run(name, ios, cuhk_protocols=())
    assert "search_CBGM" not in r and "search_GTOracle" not in r
    inp, out = ios[-1]
    del out["instances"]
    with pytest.raises(ValueError, match="q0.jpg.*instances"):
        run(name, ios, cuhk_protocols=(), cbgm=True)


def test_cbgm_context_leaves_out_the_query_person():
    boxes = np.array([QBOX, C_BOX, [300, 0, 350, 100]], dtype=np.float32)
    scores = np.array([0.99, 0.3, 0.9], dtype=np.float32)
    embs = np.eye(3, dtype=np.float32)
    ctx = query_context(QBOX, boxes, scores, embs, 2)
    np.testing.assert_array_equal(ctx, embs[[2, 1]])  # by score, the query's own detection excluded
    assert len(query_context(QBOX, boxes, scores, embs, 0)) == 0


def oracle_scene():
    """g0: the query person (GT) is missed by the detector; the oracle embeds the GT boxes instead.

    Detections: g0 only a box far from the person -> standard AP 0. Oracle: g0 person .8 (+), g0
    other .9, g1 person .5 -> ranking .9 .8+ .5 -> AP 1/2, top-1 miss, top-5 hit.
    """
    gallery = [H.record("g0.jpg", 0, [H.anno(GT, 0), H.anno(C_BOX, -1)]),
               H.record("g1.jpg", 1, [H.anno([0, 0, 40, 80], -1)])]
    queries = [H.query_record("q0.jpg", 100, QBOX, 0)]
    protocols = {"TestG100": [{"query_index": 0, "gallery": [{"image": "g0.jpg", "bbox": GT},
                                                             {"image": "g1.jpg", "bbox": None}]}]}
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ios = [H.gallery_io(gallery[0], [([300, 300, 340, 380], 0.9, 0.95)]), H.gallery_io(gallery[1], [])]
    ios[0][1]["oracle_embeddings"] = torch.tensor([H.emb(0.8), H.emb(0.9)])
    ios[1][1]["oracle_embeddings"] = torch.tensor([H.emb(0.5)])
    ios.append(H.query_io(queries[0]))
    return name, ios


def test_gt_box_oracle_values():
    name, ios = oracle_scene()
    r = run(name, ios, cuhk_protocols=(), gt_box_oracle=True)
    assert r["search"]["mAP"] == 0.0
    assert r["search_GTOracle"] == pytest.approx({"mAP": 50.0, "top1": 0.0, "top5": 100.0, "top10": 100.0})
    assert "search_GTOracle" not in run(name, ios, cuhk_protocols=())


def test_gt_box_oracle_checks_the_embeddings():
    name, ios = oracle_scene()
    ios[1][1]["oracle_embeddings"] = torch.tensor([H.emb(0.5), H.emb(0.4)])  # the record has one GT box
    with pytest.raises(ValueError, match="g1.jpg.*oracle_embeddings.*one per GT box"):
        run(name, ios, cuhk_protocols=(), gt_box_oracle=True)
    del ios[1][1]["oracle_embeddings"]
    with pytest.raises(ValueError, match="g1.jpg has no 'oracle_embeddings'"):
        run(name, ios, cuhk_protocols=(), gt_box_oracle=True)


def test_prw_same_camera_values():
    gallery, queries, dets = H.prw_scene()
    name = H.register("prw", gallery, queries)
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery] + [H.query_io(q) for q in queries]
    r = run(name, ios, prw_same_camera=True)
    # Query 0 (cam 1): gallery = f1 only: negative .9, positive .4 -> AP 1/2, top-1 miss.
    # Query 1 (cam 2): f2 does not hold person 9 -> no positive, left out.
    assert r["search_SameCamera"] == pytest.approx({"mAP": 50.0, "top1": 0.0, "top5": 100.0, "top10": 100.0})
    assert r["search_MultiView"]["mAP"] == pytest.approx(100.0)  # unchanged beside it
    assert r["search"]["mAP"] == pytest.approx(50.0)
    assert "search_SameCamera" not in run(name, ios)


@pytest.mark.parametrize("fraction,large", [(0.0, 1e9), (0.0, 0), (float("inf"), 1e9)])
def test_options_on_every_scoring_path(monkeypatch, fraction, large):
    """CBGM, the GT-box oracle and PRW same-camera give the values above whether similarities come
    from the full product (fraction 0; large 0: default protocol and CBGM query by query) or from
    per-image products (inf)."""
    import galw.evaluation.protocol_search as P
    import galw.evaluation.gallery_similarity as S

    monkeypatch.setattr(P, "LARGE_GALLERY", large)
    monkeypatch.setattr(S, "FULL_PRODUCT_FRACTION", fraction)
    name, ios = cbgm_scene()
    r = run(name, ios, cuhk_protocols=(), cbgm=True, cbgm_context=2)
    assert r["search_CBGM"] == pytest.approx({"mAP": 100.0, "top1": 100.0, "top5": 100.0, "top10": 100.0})
    assert r["search"]["mAP"] == pytest.approx(50.0)
    name, ios = oracle_scene()
    assert run(name, ios, cuhk_protocols=(), gt_box_oracle=True)["search_GTOracle"]["mAP"] == pytest.approx(50.0)
    gallery, queries, dets = H.prw_scene()
    name = H.register("prw", gallery, queries)
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery] + [H.query_io(q) for q in queries]
    r = run(name, ios, prw_same_camera=True)
    assert (r["search"]["mAP"], r["search_MultiView"]["mAP"], r["search_SameCamera"]["mAP"]) == pytest.approx(
        (50.0, 100.0, 50.0))


def _cfg(tmp_path, **keys):
    from detectron2.config import get_cfg

    from galw import add_galw_config

    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.PERSON_SEARCH.CUHK_PROTOCOLS = []
    for k, v in keys.items():
        setattr(cfg.TEST.PERSON_SEARCH, k, v)
    return cfg


def test_config_keys_turn_each_option_on(tmp_path):
    """The same scenes as above, the options set by their TEST.PERSON_SEARCH keys (from_config)."""
    def run_cfg(name, ios, **keys):
        ev = PersonSearchEvaluator(_cfg(tmp_path, **keys), name, distributed=False)
        ev.reset()
        for inp, out in ios:
            ev.process([inp], [out])
        return ev.evaluate()

    name, ios = cbgm_scene()
    assert "search_CBGM" not in run_cfg(name, ios)
    r = run_cfg(name, ios, CBGM=True, CBGM_CONTEXT=2)
    assert r["search_CBGM"] == pytest.approx({"mAP": 100.0, "top1": 100.0, "top5": 100.0, "top10": 100.0})
    assert run_cfg(name, ios, CBGM=True, CBGM_CONTEXT=2, CBGM_TOP_DETECTIONS=1)["search_CBGM"]["mAP"] == (
        pytest.approx(50.0))
    name, ios = oracle_scene()
    assert run_cfg(name, ios, GT_BOX_ORACLE=True)["search_GTOracle"]["mAP"] == pytest.approx(50.0)
    gallery, queries, dets = H.prw_scene()
    name = H.register("prw", gallery, queries)
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery] + [H.query_io(q) for q in queries]
    assert "search_SameCamera" not in run_cfg(name, ios)
    assert run_cfg(name, ios, PRW_SAME_CAMERA=True)["search_SameCamera"]["mAP"] == pytest.approx(50.0)


@pytest.mark.parametrize("oracle", [False, True])
def test_gt_box_oracle_key_makes_the_gallery_loader_carry_gt_boxes(tmp_path, monkeypatch, oracle):
    """evaluate_person_search asks for the gallery's GT boxes exactly when GT_BOX_ORACLE is set
    (the model embeds them only if the loader carries them); the query loader never."""
    import galw.evaluation.run as R

    name, _ = oracle_scene()
    built = []
    monkeypatch.setattr(R, "build_person_search_test_loader",
                        lambda cfg, dataset, oracle_boxes=False: built.append((dataset, oracle_boxes)) or dataset)
    monkeypatch.setattr(R, "inference_person_search", lambda model, gallery, query, evaluator: {})
    R.evaluate_person_search(_cfg(tmp_path, GT_BOX_ORACLE=oracle), None, name)
    from detectron2.data import MetadataCatalog

    assert built == [(name, oracle), (MetadataCatalog.get(name).query_set, False)]
