"""Per-query search metrics of the standard person-search protocol (OIM / NAE / SeqNet line).

Everything here is plain numpy on one query at a time (the similarities come batched from the
caller). Ranking is by similarity, descending; ties are broken by GALLERY ORDER (the order of
the gallery images in the protocol list, then the detection order inside an image): of two
detections with equal similarity the earlier one ranks higher. Average precision has
scikit-learn's ``average_precision_score`` semantics, where tied scores share one threshold
and tie-breaking cannot change AP.
"""
from dataclasses import dataclass, field
from typing import List

import numpy as np

TOPK = (1, 5, 10)


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of [N,4] boxes against one box, [x1,y1,x2,y2] with no +1."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    iw = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = iw * ih
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (box[2] - box[0]) * (box[3] - box[1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N,M] of [N,4] and [M,4] boxes, no +1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def positive_iou_threshold(gt_box) -> float:
    """The small-box rule: min(0.5, w*h / ((w+10)*(h+10))) for the GT box (w, h)."""
    w = float(gt_box[2] - gt_box[0])
    h = float(gt_box[3] - gt_box[1])
    return min(0.5, w * h / ((w + 10.0) * (h + 10.0)))


def pick_positive(sims: np.ndarray, boxes: np.ndarray, gt_box) -> int:
    """Index of the single positive among one image's detections, or -1.

    Detections are visited by similarity (descending, stable); the first whose IoU with the
    GT box reaches the small-box threshold is the positive.
    """
    if len(sims) == 0:
        return -1
    ok = box_iou(boxes, gt_box) >= positive_iou_threshold(gt_box)
    if not ok.any():
        return -1
    order = np.argsort(-sims, kind="stable")
    return int(order[np.argmax(ok[order])])


def ap_from_positives(y_score: np.ndarray, pos_scores: np.ndarray) -> float:
    """sklearn's average precision of ``y_score`` whose positives have scores ``pos_scores``.

    AP = mean over positives p of (#positives with score >= s_p) / (#all with score >= s_p),
    which equals sklearn's step-wise sum over distinct thresholds. Only scores >= the lowest
    positive score are sorted, so a query costs O(M + C log C).
    """
    if len(pos_scores) == 0:
        return 0.0
    cand = np.sort(y_score[y_score >= pos_scores.min()])
    pos_sorted = np.sort(pos_scores)
    n_ge = len(cand) - np.searchsorted(cand, pos_scores, side="left")
    tp_ge = len(pos_sorted) - np.searchsorted(pos_sorted, pos_scores, side="left")
    return float(np.mean(tp_ge / n_ge))


@dataclass
class QueryResult:
    """The outcome of one query under one protocol."""

    ap: float
    count_gt: int
    count_tp: int
    hits: List[int]  # one 0/1 per k in TOPK
    top: List[dict] = field(default_factory=list)  # ranked top-10 entries (only when asked)


def evaluate_query(sim_row, det_idx, img_offsets, pos_entries, store, want_top=False):
    """Score one query against its gallery.

    sim_row: similarities of the query to ALL kept gallery detections (store order).
    det_idx: store indices of the detections of this query's gallery, in gallery order.
    img_offsets: dict-like list position -> offset of that image's detections inside det_idx.
    pos_entries: list of (list_position, store image index, gt_box) for the gallery images that
      contain the query person (count_gt = len(pos_entries)).
    """
    y_score = sim_row[det_idx]
    pos_positions, pos_scores = [], []
    for list_pos, img, gt_box in pos_entries:
        start, n = store.starts[img], store.counts[img]
        k = pick_positive(sim_row[start : start + n], store.boxes[start : start + n], gt_box)
        if k >= 0:
            pos_positions.append(img_offsets[list_pos] + k)
            pos_scores.append(sim_row[start + k])
    count_gt = len(pos_entries)
    count_tp = len(pos_positions)
    pos_scores = np.asarray(pos_scores, dtype=y_score.dtype)
    pos_positions = np.asarray(pos_positions, dtype=np.int64)
    ap = ap_from_positives(y_score, pos_scores) * count_tp / count_gt if count_tp else 0.0
    hits = [0] * len(TOPK)
    if count_tp:
        # The best-ranked positive: highest score, earliest in gallery order among equals.
        s_max = pos_scores.max()
        best = _rank(y_score, s_max, int(pos_positions[pos_scores == s_max].min()))
        hits = [int(best < k) for k in TOPK]
    top = _top_list(y_score, det_idx, set(pos_positions.tolist()), max(TOPK)) if want_top else []
    return QueryResult(ap=ap, count_gt=count_gt, count_tp=count_tp, hits=hits, top=top)


def _rank(y_score, score, position) -> int:
    """0-based rank: strictly higher scores, plus equal scores earlier in gallery order."""
    higher = int(np.count_nonzero(y_score > score))
    ties_before = int(np.count_nonzero(y_score[:position] == score))
    return higher + ties_before


def _top_list(y_score, det_idx, positive_positions, k):
    """The k best (position, store index, score, correct), ranked with the stable tie rule."""
    if len(y_score) == 0:
        return []
    kth = np.partition(-y_score, min(k, len(y_score)) - 1)[min(k, len(y_score)) - 1]
    cand = np.nonzero(-y_score <= kth)[0]
    cand = cand[np.lexsort((cand, -y_score[cand]))][:k]
    return [
        {"det": int(det_idx[p]), "similarity": float(y_score[p]), "correct": int(p) in positive_positions}
        for p in cand
    ]
