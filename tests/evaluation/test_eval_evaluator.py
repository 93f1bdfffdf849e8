"""PersonSearchEvaluator on hand-built CUHK-SYSU and PRW scenes (expected values in eval_helpers)."""
import json
import math

import pytest
import torch

import galw  # noqa: F401
from galw.evaluation import PersonSearchEvaluator

import eval_helpers as H


def run(gallery_name, ios, **kwargs):
    ev = PersonSearchEvaluator(gallery_name, distributed=False, **kwargs)
    ev.reset()
    for inp, out in ios:
        ev.process([inp], [out])
    return ev.evaluate()


def cuhk(tmp_path=None, duplicate=True, **kwargs):
    gallery, queries, protocols, dets = H.cuhk_scene(duplicate)
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    return name, run(name, H.cuhk_ios(gallery, queries, dets), output_dir=tmp_path and str(tmp_path), **kwargs)


def test_cuhk_search_values(tmp_path):
    name, r = cuhk(tmp_path)
    # query 0: AP (1 + 2/5 + 3/6)/3 * 3/4 (g3 undetected counts in count_gt; g4 duplicate skipped)
    # query 1: AP 1/3, top1 miss
    expected_map = 100 * (0.475 + 1 / 3) / 2
    assert r["search"]["mAP"] == pytest.approx(expected_map)
    assert (r["search"]["top1"], r["search"]["top5"], r["search"]["top10"]) == (50.0, 100.0, 100.0)
    assert r["search_TestG100"] == r["search"]
    # TestG50 lists: q0 over g0..g3: B+ D A E+ C+ -> (1 + 2/4 + 3/5)/3 * 3/4; q1 over g4: AP 1
    assert r["search_TestG50"]["mAP"] == pytest.approx(100 * (0.525 + 1) / 2)
    assert r["search_TestG50"]["top1"] == 100.0
    assert r["search_Occlusion"]["mAP"] == pytest.approx(100 / 3)
    # Whole gallery = TestG50 lists plus every other image as negatives.
    assert r["search_WholeGallery"]["mAP"] == pytest.approx(expected_map)
    assert "search_TestG500" not in r  # not in this metadata: logged, not reported
    # Detection: 5 of 6 GT matched; AP = sklearn AP 0.725 times recall 5/6.
    assert r["detection"]["recall"] == pytest.approx(100 * 5 / 6)
    assert r["detection"]["AP"] == pytest.approx(100 * 0.725 * 5 / 6)
    assert r["detection"]["recall_labeled"] == pytest.approx(80.0)

    out = json.load(open(tmp_path / f"search_{name}.json"))
    assert out["dataset"] == name and out["metrics"]["search"]["mAP"] == pytest.approx(expected_map)
    q0 = out["queries"][0]
    assert q0["query_image"] == "/data/q0.jpg" and q0["person_id"] == 0 and q0["count_gt"] == 4
    assert q0["ap"] == pytest.approx(0.475)
    assert [t["similarity"] for t in q0["top10"]] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    assert [t["correct"] for t in q0["top10"]] == [True, False, False, False, True, True]
    assert q0["top10"][0]["image"] == "/data/g0.jpg" and q0["top10"][0]["box"] == [2, 2, 52, 102]


def test_duplicate_entries_are_skipped():
    _, with_dup = cuhk(duplicate=True, cuhk_protocols=("TestG100",))
    _, without = cuhk(duplicate=False, cuhk_protocols=("TestG100",))
    assert with_dup["search"] == without["search"]


def test_cuhk_gallery_size_and_thresholds():
    _, r = cuhk(cuhk_gallery_size=50, cuhk_protocols=())
    assert r["search"]["mAP"] == pytest.approx(100 * (0.525 + 1) / 2)
    # Threshold 0.25 brings in g3's detection (score .3, sim .99, positive) and g5 G (score .4, sim .95, negative) for query 0.
    _, r = cuhk(search_score_thresh=0.25, cuhk_protocols=())
    # q0 ranking: .99+ .95 .9+ .8 .7 .6 .5+ .3+ -> (1 + 2/3 + 3/7 + 4/8)/4, recall 4/4
    q0 = (1 + 2 / 3 + 3 / 7 + 4 / 8) / 4
    # q1 ranking over [g4, g0, g1]: B .9 D .8 F+ .7 -> 1/3
    assert r["search"]["mAP"] == pytest.approx(100 * (q0 + 1 / 3) / 2)


def test_query_feature_best_iou_detection():
    gallery, queries, protocols, dets = H.cuhk_scene()
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery]
    # The GT-box embedding points away ([0,1]); the detection with the highest IoU to the query box
    # carries [1,0], so the option reproduces the default's numbers.
    for q in queries:
        box = q["query"]["bbox"]
        ios.append(H.query_io(q, embedding=[0.0, 1.0], dets=[([300, 300, 400, 400], 0.9, [0.0, 1.0]),
                                                               (box, 0.2, [1.0, 0.0])]))
    r = run(name, ios, query_feature="best_iou_detection", cuhk_protocols=())
    assert r["search"]["mAP"] == pytest.approx(100 * (0.475 + 1 / 3) / 2)
    r = run(name, ios, cuhk_protocols=())  # default: the (misleading) GT-box embedding is used
    assert r["search"]["mAP"] != pytest.approx(100 * (0.475 + 1 / 3) / 2)


def prw(**kwargs):
    gallery, queries, dets = H.prw_scene()
    name = H.register("prw", gallery, queries)
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery] + [H.query_io(q) for q in queries]
    return run(name, ios, **kwargs)


def test_prw_query_frame_excluded_and_multi_view(caplog):
    r = prw()
    # Standard: f1n .9, f2+ .8, f3n .6, f1+ .4 -> (1/2 + 2/4)/2; query 1 has no positive: left out, logged.
    assert r["search"]["mAP"] == pytest.approx(50.0)
    assert (r["search"]["top1"], r["search"]["top5"]) == (0.0, 100.0)
    # Multi-view drops camera 1 (f0, f1): f2+ .8, f3n .6 -> AP 1, count_gt 1.
    assert r["search_MultiView"]["mAP"] == pytest.approx(100.0)
    assert r["search_MultiView"]["top1"] == 100.0
    assert "search_standard" not in r
    assert "1 queries have no positive" in caplog.text
    assert "search_MultiView" not in prw(prw_multi_view=False)


def test_similarity_histogram_of_true_matches_and_other_people(tmp_path):
    gallery, queries, dets = H.prw_scene()
    name = H.register("prw", gallery, queries)
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery] + [H.query_io(q) for q in queries]
    run(name, ios, output_dir=str(tmp_path))
    hist = json.load(open(tmp_path / f"search_{name}.json"))["similarity_histogram"]
    # Standard protocol, query 0 over f1 f2 f3: positives f1 .4 and f2 .8, others f1 .9 and f3 .6;
    # query 1 has no positive and adds nothing.
    assert sum(hist["positive"]) == 2 and sum(hist["negative"]) == 2
    assert hist["mean_positive"] == pytest.approx(0.6, abs=1e-6)
    assert hist["mean_negative"] == pytest.approx(0.75, abs=1e-6)
    edges = hist["bin_edges"]
    assert len(edges) == len(hist["positive"]) + 1 and edges[0] == -1.0 and edges[-1] == 1.0

    def centres(counts):
        return sorted((edges[i] + edges[i + 1]) / 2 for i, c in enumerate(counts) for _ in range(c))

    assert centres(hist["positive"]) == pytest.approx([0.4, 0.8], abs=0.026)
    assert centres(hist["negative"]) == pytest.approx([0.6, 0.9], abs=0.026)


def test_attribute_metrics_from_model_outputs():
    gallery = [H.record("a0.jpg", 0, [H.anno([0, 0, 10, 20], 0, [1, 0]), H.anno([50, 0, 60, 20], -1, [0, -1])]),
               H.record("a1.jpg", 1, [H.anno([0, 0, 10, 20], 1, [0, 1]), H.anno([50, 0, 60, 20], 2, [1, 1])])]
    queries = [H.query_record("qa.jpg", 9, [0, 0, 10, 20], 0)]
    protocols = {"TestG100": [{"query_index": 0, "gallery": [{"image": "a0.jpg", "bbox": [0, 0, 10, 20]},
                                                              {"image": "a1.jpg", "bbox": None}]}]}
    name = H.register("cuhk_sysu", gallery, queries, protocols, attribute_names=["hat", "bag"])
    ios = [
        H.gallery_io(gallery[0], [([0, 0, 10, 20], 0.9, 0.9), ([50, 0, 60, 20], 0.9, 0.1), ([200, 0, 210, 20], 0.9, 0.1)],
                     attribute_probs=[[0.8, 0.3], [0.6, 0.9], [0.9, 0.9]]),
        H.gallery_io(gallery[1], [([0, 0, 10, 20], 0.9, 0.2), ([50, 0, 60, 20], 0.9, 0.2)],
                     attribute_probs=[[0.2, 0.7], [0.4, 0.6]]),
        H.query_io(queries[0]),
    ]
    r = run(name, ios)
    # Matched detections only (the third detection of a0 matches no box):
    # hat labels 1,0,0,1 with probs .8,.6,.2,.4 -> TP/P 1/2, TN/N 1/2; AP: .8+ .6 .4+ .2 -> (1 + 2/3)/2
    # bag labels 0,-,1,1 with probs .3,.7,.6 -> perfect (1.0); AP 1
    assert r["attributes"]["AP_hat"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert r["attributes"]["AP_bag"] == pytest.approx(100.0)
    assert r["attributes"]["mA"] == pytest.approx(75.0)
    assert r["search"]["mAP"] == pytest.approx(100.0)


# ---------------------------------------------------------------- bad input
def _cuhk_ios():
    gallery, queries, protocols, dets = H.cuhk_scene()
    return H.register("cuhk_sysu", gallery, queries, protocols), H.cuhk_ios(gallery, queries, dets)


@pytest.mark.parametrize("field", ["embeddings", "scores", "pred_boxes"])
def test_missing_output_field(field):
    name, ios = _cuhk_ios()
    ios[0][1]["instances"].remove(field)
    with pytest.raises(ValueError, match=f"g0.jpg.*'{field}'"):
        run(name, ios)


def test_missing_query_embedding():
    name, ios = _cuhk_ios()
    del ios[-1][1]["query_embedding"]
    with pytest.raises(ValueError, match="q1.jpg has no 'query_embedding'"):
        run(name, ios)


def test_wrong_embedding_dimension():
    name, ios = _cuhk_ios()
    ios[-1][1]["query_embedding"] = torch.tensor([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="dimension 3 .*q1.jpg"):
        run(name, ios)


@pytest.mark.parametrize("field", ["scores", "embeddings"])
def test_nan_in_outputs(field):
    name, ios = _cuhk_ios()
    getattr(ios[1][1]["instances"], field)[0] = math.nan
    with pytest.raises(ValueError, match=f"g1.jpg: '{field}' contains NaN"):
        run(name, ios)


def test_nan_in_query_embedding():
    name, ios = _cuhk_ios()
    ios[-2][1]["query_embedding"] = torch.tensor([math.nan, 0.0])
    with pytest.raises(ValueError, match="q0.jpg: query embedding contains NaN"):
        run(name, ios)


def test_missing_gallery_output():
    name, ios = _cuhk_ios()
    with pytest.raises(ValueError, match="1 of 6 gallery images .* no model output"):
        run(name, ios[1:])


def test_protocol_names_unknown_image():
    gallery, queries, protocols, dets = H.cuhk_scene()
    protocols["TestG100"][0]["gallery"].append({"image": "nope.jpg", "bbox": None})
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    with pytest.raises(ValueError, match="TestG100.*nope.jpg"):
        run(name, H.cuhk_ios(gallery, queries, dets))


def test_no_query_with_positives_is_an_error():
    gallery, queries, dets = H.prw_scene()
    name = H.register("prw", gallery, queries[1:])
    ios = [H.gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery] + [H.query_io(queries[1])]
    with pytest.raises(ValueError, match="no query has a positive"):
        run(name, ios)


def test_config_defaults_build_the_evaluator(tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    assert cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH == 0.5
    assert cfg.TEST.PERSON_SEARCH.DETECTION_SCORE_THRESH == 0.01
    assert cfg.TEST.PERSON_SEARCH.QUERY_FEATURE == "gt_box"
    assert cfg.TEST.PERSON_SEARCH.CUHK_GALLERY_SIZE == 100
    gallery, queries, protocols, dets = H.cuhk_scene()
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ev = PersonSearchEvaluator(cfg, name)
    ev.reset()
    for inp, out in H.cuhk_ios(gallery, queries, dets):
        ev.process([inp], [out])
    r = ev.evaluate()
    assert r["search"]["mAP"] == pytest.approx(100 * (0.475 + 1 / 3) / 2)
    assert (tmp_path / "inference" / f"search_{name}.json").exists()


def test_reset_forgets_the_embedding_dimension():
    gallery, queries, protocols, dets = H.cuhk_scene()
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ev = PersonSearchEvaluator(name, distributed=False, cuhk_protocols=())
    ev.reset()
    ev.process(*[[x] for x in H.query_io(queries[0], embedding=[1.0, 0.0, 0.0])])
    ev.reset()
    for inp, out in H.cuhk_ios(gallery, queries, dets):
        ev.process([inp], [out])
    assert ev.evaluate()["search"]["mAP"] == pytest.approx(100 * (0.475 + 1 / 3) / 2)


@pytest.mark.parametrize("fraction,large", [(0.0, 1e9), (0.0, 0), (float("inf"), 1e9)])
def test_chunked_and_either_similarity_path_give_the_same_results(monkeypatch, tmp_path, fraction, large):
    """One query per layout chunk, scored from the full product (fraction 0; with large = 0 the
    default protocol query by query) or from per-image products (inf): the same numbers and
    per-query JSON as the default run."""
    import galw.evaluation.protocol_search as P
    import galw.evaluation.gallery_similarity as S

    _, default = cuhk(tmp_path / "a")
    monkeypatch.setattr(P, "LAYOUT_ENTRIES", 1)
    monkeypatch.setattr(P, "LARGE_GALLERY", large)
    monkeypatch.setattr(S, "FULL_PRODUCT_FRACTION", fraction)
    _, other = cuhk(tmp_path / "b")
    assert other == default
    a = json.load(open(next((tmp_path / "a").glob("*.json"))))["queries"]
    b = json.load(open(next((tmp_path / "b").glob("*.json"))))["queries"]
    assert a == b


def test_protocol_tables_give_the_same_results_as_entry_lists(tmp_path):
    """galw.data hands protocols over as ProtocolTable columns; the evaluator reads them directly,
    with the numbers and per-query JSON of the documented entry lists."""
    from galw.data.protocol_table import ProtocolTable

    gallery, queries, protocols, dets = H.cuhk_scene()
    tables = {k: ProtocolTable.from_entries(v, k) for k, v in protocols.items()}
    assert {k: list(t) for k, t in tables.items()} == protocols
    results = []
    for i, p in enumerate((protocols, tables)):
        name = H.register("cuhk_sysu", gallery, queries, p)
        results.append(run(name, H.cuhk_ios(gallery, queries, dets), output_dir=str(tmp_path / str(i))))
    assert results[0] == results[1]
    a, b = (json.load(open(next((tmp_path / str(i)).glob("*.json"))))["queries"] for i in (0, 1))
    assert a == b
