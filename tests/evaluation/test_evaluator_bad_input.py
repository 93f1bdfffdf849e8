"""Evaluator bad-input catalogue. Each case failed on the code before its fix.

- (a) ``PersonSearchEvaluator("<prefix>_gallery")`` built BEFORE the dataset was loaded in the
  process (the order docs/evaluation.md shows) keeps no stale metadata: the default protocol is
  found and the scene scores as expected.
- (b) Two PRW queries with the same frame and person id but different boxes are both scored, each
  with its own embedding (the query input's box, at input scale, tells them apart).
- (c) A CUHK-SYSU root lacking an optional protocol file (Occlusion.mat) is logged, naming the
  file, and that protocol is not reported; the other protocols are.
- (d) A CUHK-SYSU TestG query box with a negative width is rejected with an error naming the file
  and the query (read as given, it would become an inverted box).
- (e) (docs only) PRW negative-x clipping vs SeqNet: see docs/evaluation.md, "PRW boxes at the
  image border".
"""
import logging
import os
import uuid

import pytest
import scipy.io
import torch
from detectron2.structures import Boxes, Instances

import galw  # noqa: F401
from galw.data.matlab import MatFormatError
from galw.evaluation import PersonSearchEvaluator

import data_helpers as D
import eval_helpers as H


def _fixture_outputs(gallery, queries):
    """Fake outputs on the CUHK-SYSU fixture: every query's positive ranks first (AP 1)."""
    sims = {"s5.jpg": 0.9, "s4.jpg": 0.2, "s6.jpg": 0.1}  # q0's positive is in s5, q1's in s4 (box at x=50)
    ios = []
    for r in gallery:
        name = os.path.basename(r["file_name"])
        dets = [(a["bbox"], 0.9, 0.95 if a["bbox"][0] == 50 else sims[name]) for a in r["annotations"]]
        ios.append(H.gallery_io(r, dets))
    ios += [H.query_io(q) for q in queries]
    return ios


def _evaluate(gallery_name, ios, **kwargs):
    ev = PersonSearchEvaluator(gallery_name, distributed=False, **kwargs)
    ev.reset()
    for inp, out in ios:
        ev.process([inp], [out])
    return ev.evaluate()


@pytest.fixture
def cuhk_root(tmp_path):
    return D.write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"))


def _registered(root):
    prefix = f"badeval_{uuid.uuid4().hex[:8]}"
    return prefix, D.register(prefix, "cuhk_sysu", root)


def test_a_evaluator_built_before_the_dataset_was_loaded(cuhk_root):
    from detectron2.data import DatasetCatalog

    prefix, cleanup = _registered(cuhk_root)
    try:
        ev = PersonSearchEvaluator(f"{prefix}_gallery", distributed=False)  # first load happens in here
        gallery, queries = DatasetCatalog.get(f"{prefix}_gallery"), DatasetCatalog.get(f"{prefix}_query")
        ev.reset()
        for inp, out in _fixture_outputs(gallery, queries):
            ev.process([inp], [out])
        r = ev.evaluate()
        assert r["search"]["mAP"] == pytest.approx(100.0)
        # The fixture's Occlusion lists query 1 only, Resolution query 0 only: both present and scored.
        assert r["search_Occlusion"]["mAP"] == pytest.approx(100.0)
        assert r["search_Resolution"]["mAP"] == pytest.approx(100.0)
    finally:
        cleanup()


def test_b_prw_queries_with_same_frame_and_pid_are_each_scored():
    box_a, box_b = [10, 10, 60, 130], [14, 12, 66, 128]
    gallery = [
        H.record("c1s1_000001.jpg", 0, [H.anno(box_a, 7)], camera_id=1),
        H.record("c2s1_000001.jpg", 1, [H.anno(H.P_BOX, 7), H.anno([200, 10, 250, 130], -1)], camera_id=2),
    ]
    queries = [
        H.query_record("c1s1_000001.jpg", 0, box_a, 7, camera_id=1),
        H.query_record("c1s1_000001.jpg", 0, box_b, 7, camera_id=1),
    ]
    name = H.register("prw", gallery, queries)
    ios = [
        H.gallery_io(gallery[0], [(box_a, 0.99, 0.99)]),
        # positive .8 / negative .6 against [1, 0]; against [0, 1] positive sqrt(1-.64)=.6, negative .8
        H.gallery_io(gallery[1], [(H.P_BOX, 0.9, 0.8), ([200, 10, 250, 130], 0.9, 0.6)]),
    ]
    # Query inputs at input scale 2 (the mapper resized 500x500 to 1000x1000).
    for q, emb in zip(queries, ([1.0, 0.0], [0.0, 1.0])):
        inp, out = H.query_io(q, embedding=emb)
        qi = Instances((1000, 1000))
        qi.gt_boxes = Boxes(torch.tensor([[2.0 * v for v in q["query"]["bbox"]]]))
        qi.gt_pids = torch.tensor([7])
        inp["query_instances"] = qi
        ios.append((inp, out))
    r = _evaluate(name, ios, prw_multi_view=False)
    # query 0: positive first -> AP 1, top1 hit; query 1: negative first -> AP 1/2, top1 miss.
    assert r["search"]["mAP"] == pytest.approx(75.0)
    assert r["search"]["top1"] == pytest.approx(50.0)


def test_c_missing_optional_protocol_file_is_logged_and_skipped(cuhk_root, caplog):
    from detectron2.data import DatasetCatalog

    occlusion = os.path.join(cuhk_root, "annotation", "test", "subset", "Occlusion.mat")
    os.remove(occlusion)
    prefix, cleanup = _registered(cuhk_root)
    try:
        gallery, queries = DatasetCatalog.get(f"{prefix}_gallery"), DatasetCatalog.get(f"{prefix}_query")
        with caplog.at_level(logging.WARNING, logger="galw"):
            r = _evaluate(f"{prefix}_gallery", _fixture_outputs(gallery, queries))
        assert "search_Occlusion" not in r
        assert r["search"]["mAP"] == pytest.approx(100.0) and "search_Resolution" in r
        assert "Occlusion" in caplog.text and occlusion in caplog.text
    finally:
        cleanup()


def test_c_missing_default_protocol_file_is_an_error(cuhk_root):
    from detectron2.data import DatasetCatalog

    g100 = os.path.join(cuhk_root, "annotation", "test", "train_test", "TestG100.mat")
    os.remove(g100)
    prefix, cleanup = _registered(cuhk_root)
    try:
        gallery, queries = DatasetCatalog.get(f"{prefix}_gallery"), DatasetCatalog.get(f"{prefix}_query")
        with pytest.raises(FileNotFoundError, match="TestG100.mat"):
            _evaluate(f"{prefix}_gallery", _fixture_outputs(gallery, queries))
    finally:
        cleanup()


def test_d_cuhk_query_box_with_negative_width_is_rejected(cuhk_root):
    from detectron2.data import DatasetCatalog

    bad = [("s4.jpg", (10, 10, 20, 40), [("s5.jpg", (5, 5, 25, 50))]),
           ("s6.jpg", (60, 10, -15, 35), [("s4.jpg", (50, 10, 20, 40))])]
    path = os.path.join(cuhk_root, "annotation", "test", "train_test", "TestG50.mat")
    scipy.io.savemat(path, {"TestG50": D._protocol(bad)})
    prefix, cleanup = _registered(cuhk_root)
    try:
        with pytest.raises(MatFormatError) as err:
            DatasetCatalog.get(f"{prefix}_query")
        msg = str(err.value)
        assert path in msg and "TestG50(2).Query" in msg and "width" in msg
        assert "-15" in msg
    finally:
        cleanup()
