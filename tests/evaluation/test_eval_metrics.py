"""Unit checks of the protocol's building blocks against hand-computed values and sklearn."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import galw  # noqa: F401
from galw.evaluation.attribute_metrics import evaluate_attributes
from galw.evaluation.detection_metrics import (
    _first_argmax,
    batched_mutual_argmax_matches,
    evaluate_detection,
    mutual_argmax_matches,
)
from galw.evaluation.gallery_store import SearchGalleryStore
from galw.evaluation.search_metrics import (
    ap_from_positives,
    box_iou,
    evaluate_queries,
    evaluate_query,
    pick_positives,
    positive_iou_threshold,
)


def test_iou_has_no_plus_one():
    assert box_iou([[0, 0, 10, 10]], [5, 0, 15, 10])[0] == pytest.approx(50 / 150)


def one_image(sims, boxes, gt):
    sims = np.asarray(sims, dtype=np.float32)
    return int(pick_positives(sims, np.asarray(boxes, dtype=np.float64), np.zeros(len(sims), np.int64), [gt])[0])


def test_small_box_iou_rule():
    assert positive_iou_threshold([0, 0, 10, 10]) == pytest.approx(100 / 400)
    assert positive_iou_threshold([0, 0, 20, 30]) == pytest.approx(600 / (30 * 40))  # 0.5 exactly
    assert positive_iou_threshold([0, 0, 100, 200]) == 0.5
    # A detection with IoU 0.4 is a positive for a 10x10 GT (threshold 0.25), not for a 50x100 one.
    assert one_image([0.5], [[0, 0, 10, 25]], [0, 0, 10, 10]) == 0
    assert one_image([0.5], [[0, 0, 50, 250]], [0, 0, 50, 100]) == -1


def test_one_positive_first_by_similarity():
    boxes = [[0, 0, 50, 100], [2, 2, 52, 102], [0, 0, 50, 100]]
    # Both overlapping detections qualify; the more similar one (index 1) is the positive.
    assert one_image([0.6, 0.9, 0.1], boxes, [0, 0, 50, 100]) == 1
    # Equal similarity: the earlier detection wins (stable order).
    assert one_image([0.7, 0.7, 0.1], boxes, [0, 0, 50, 100]) == 0
    # A more similar detection that misses the GT does not block the overlapping one.
    assert one_image([0.99, 0.2], [[300, 300, 350, 400], [0, 0, 50, 100]], [0, 0, 50, 100]) == 1


def test_positives_of_several_images_at_once():
    # Image 0: dets 0,1 ; image 1: dets 2,3 (none overlaps) ; image 2: det 4.
    sims = np.array([0.2, 0.8, 0.9, 0.1, 0.3], dtype=np.float32)
    boxes = np.array([[0, 0, 10, 20], [0, 0, 10, 20], [50, 50, 60, 70], [50, 50, 60, 70], [5, 5, 15, 25]], float)
    groups = np.array([0, 0, 1, 1, 2])
    gts = [[0, 0, 10, 20], [0, 0, 10, 20], [5, 5, 15, 25]]
    assert pick_positives(sims, boxes, groups, gts).tolist() == [1, -1, 4]


@pytest.mark.parametrize("seed", range(20))
def test_ap_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    scores = np.round(rng.random(n), 1).astype(np.float32)  # many ties
    y = rng.random(n) < 0.2
    if not y.any():
        y[0] = True
    assert ap_from_positives(scores, scores[y]) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_query_ap_times_recall_topk_and_ties():
    # One image per detection; image 3 holds an undetected positive.
    boxes = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
    store = SearchGalleryStore(boxes, [np.array([[1.0, 0]]), np.array([[1.0, 0]]), np.array([[1.0, 0]]),
                                       np.zeros((0, 2))], 2)
    sims = np.array([0.9, 0.9, 0.5], dtype=np.float32)
    gt = np.array([0, 0, 10, 10], dtype=np.float64)
    imgs = np.array([0, 1, 2, 3])
    det_idx, offsets = store.detection_indices(imgs)
    # Positive at image 1 (tied with the negative at image 0, which comes first) and image 3 (missed).
    r = evaluate_query(sims, det_idx, offsets, [(1, 1, gt), (3, 3, gt)], store, want_top=True)
    assert r.count_gt == 2 and r.count_tp == 1
    assert r.ap == pytest.approx(0.5 * 0.5)  # precision 1/2 at the tied threshold, times recall 1/2
    assert r.hits == [0, 1, 1]  # the tie goes to the earlier gallery entry
    assert [t["correct"] for t in r.top] == [False, True, False]
    # Same detections, gallery order swapped: the positive now wins the tie; AP is unchanged.
    det_idx, offsets = store.detection_indices(np.array([1, 0, 2, 3]))
    r = evaluate_query(sims, det_idx, offsets, [(0, 1, gt), (3, 3, gt)], store)
    assert r.ap == pytest.approx(0.25) and r.hits == [1, 1, 1]


@pytest.mark.parametrize("seed", range(40))
def test_batched_queries_equal_the_per_query_reference(seed):
    """evaluate_queries (the evaluator's vectorised path) == evaluate_query per query: AP, counts,
    top-k and the top-10 list, on random galleries with many ties, missed and undetected positives."""
    rng = np.random.default_rng(seed)
    n_img, dim = int(rng.integers(1, 30)), 4
    boxes, embs = [], []
    for _ in range(n_img):
        k = int(rng.integers(0, 5))
        xy, wh = rng.integers(0, 50, size=(k, 2)), rng.integers(5, 40, size=(k, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
        embs.append(rng.normal(size=(k, dim)))
    store = SearchGalleryStore(boxes, embs, dim)
    nq = int(rng.integers(1, 8))
    sims = np.round(rng.normal(size=(nq + 2, len(store.boxes))), 1).astype(np.float32)
    rows = rng.permutation(nq + 2)[:nq]
    galleries, positives = [], []
    for _ in range(nq):
        g = rng.permutation(n_img)[: int(rng.integers(0, n_img + 1))]
        pos = []
        for lp, img in enumerate(g):
            if rng.random() < 0.3:
                if store.counts[img] and rng.random() < 0.7:
                    box = store.boxes[store.starts[img] + rng.integers(store.counts[img])] + rng.integers(-3, 4, 4)
                else:
                    box = np.array([0, 0, 10, 20.0])
                pos.append((lp, int(img), np.asarray(box, np.float64)))
        galleries.append(g)
        positives.append(pos)
    got = evaluate_queries(sims, galleries, positives, store, want_top=True, rows=rows)
    for q in range(nq):
        det_idx, offsets = store.detection_indices(galleries[q])
        ref = evaluate_query(sims[rows[q]], det_idx, offsets, positives[q], store, want_top=True)
        assert got[q].ap == pytest.approx(ref.ap, abs=1e-12)
        assert (got[q].count_gt, got[q].count_tp, got[q].hits, got[q].top) == (ref.count_gt, ref.count_tp, ref.hits, ref.top)


def test_topk_boundaries():
    n = 12
    store = SearchGalleryStore([np.array([[0, 0, 10, 10]])] * n, [np.array([[1.0, 0]])] * n, 2)
    sims = np.linspace(1.0, 0.0, n).astype(np.float32)
    det_idx, offsets = store.detection_indices(np.arange(n))
    gt = np.array([0, 0, 10, 10])
    assert evaluate_query(sims, det_idx, offsets, [(5, 5, gt)], store).hits == [0, 0, 1]  # rank 6
    assert evaluate_query(sims, det_idx, offsets, [(4, 4, gt)], store).hits == [0, 1, 1]  # rank 5
    assert evaluate_query(sims, det_idx, offsets, [(10, 10, gt)], store).hits == [0, 0, 0]  # rank 11


@pytest.mark.parametrize("seed", range(30))
def test_batched_detection_matches_equal_per_image(seed):
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(int(rng.integers(1, 6))):
        for out, n in ((dets, int(rng.integers(0, 5))), (gts, int(rng.integers(0, 4)))):
            xy, wh = rng.integers(0, 20, size=(n, 2)), rng.integers(3, 15, size=(n, 2))
            out.append(np.concatenate([xy, xy + wh], 1).astype(float))
    det_img = np.repeat(np.arange(len(dets)), [len(d) for d in dets])
    gt_img = np.repeat(np.arange(len(gts)), [len(g) for g in gts])
    got = batched_mutual_argmax_matches(np.concatenate(dets), det_img, np.concatenate(gts), gt_img, 0.3)
    first = np.cumsum([0] + [len(g) for g in gts])
    ref = [np.where(m >= 0, m + first[i], -1) for i, m in
           enumerate(mutual_argmax_matches(d, g, 0.3) for d, g in zip(dets, gts))]
    assert got.tolist() == np.concatenate(ref).tolist()


def test_mutual_argmax_differs_from_greedy():
    gts = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])
    dets = np.array([[0, 0, 10, 10], [2, 0, 12, 10]])  # det 1: IoU .667 with gt 0, .538 with gt 1
    assert mutual_argmax_matches(dets, gts).tolist() == [0, -1]
    images = [{"det_boxes": dets, "det_scores": np.array([0.9, 0.8]), "gt_boxes": gts, "gt_pids": np.array([-1, 3])}]
    full = evaluate_detection(images)
    assert full["recall"] == pytest.approx(0.5) and full["AP"] == pytest.approx(0.5)
    # Only the labeled gt 1 remains: det 1 is now its mutual best match.
    assert evaluate_detection(images, labeled_only=True)["recall"] == pytest.approx(1.0)


def test_detection_ap_times_recall():
    gts = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    dets = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [50, 50, 60, 60]])
    images = [{"det_boxes": dets, "det_scores": np.array([0.9, 0.8, 0.7, 0.6]), "gt_boxes": gts,
               "gt_pids": np.array([0, 1])},
              {"det_boxes": np.zeros((0, 4)), "det_scores": np.zeros(0), "gt_boxes": np.array([[0, 0, 5, 5]]),
               "gt_pids": np.array([2])}]
    r = evaluate_detection(images)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["AP"] == pytest.approx((1 + 2 / 3) / 2 * 2 / 3)


def test_attribute_metrics():
    labels = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1], [0, 0, 1], [-1, 1, -1]])
    probs = np.array([[0.9, 0.8, 0.5], [0.4, 0.2, 0.5], [0.3, 0.7, 0.5], [0.6, 0.1, 0.5], [0.99, 0.6, 0.5]])
    r = evaluate_attributes(probs, labels, ["hat", "bag", "coat"])
    assert r["AP_hat"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert r["AP_bag"] == pytest.approx(100.0)
    assert "AP_coat" not in r  # one class only: skipped and logged
    assert r["mA"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert r["mAP"] == pytest.approx((r["AP_hat"] + r["AP_bag"]) / 2)


def test_first_argmax_per_segment_in_any_order():
    values = np.array([0.5, 0.9, 0.2, 0.9, 0.7, 0.7, 0.1])
    segment = np.array([2, 0, 2, 0, 2, 3, 3])  # segment 1 is empty; ties in 0 and 3 go to the first position
    assert _first_argmax(values, segment, 4).tolist() == [1, -1, 4, 5]
    assert _first_argmax(values[:0], segment[:0], 2).tolist() == [-1, -1]
