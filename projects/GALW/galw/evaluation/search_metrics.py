"""Per-query search metrics of the standard person-search protocol (OIM / NAE / SeqNet line).

``evaluate_layout`` scores a chunk of queries at once (what the evaluator runs);
``evaluate_query`` is the readable one-query reference it is tested against, and
``evaluate_queries`` the same batch scoring from a similarity matrix and per-query lists.
Ranking is by similarity, descending; ties are broken by GALLERY ORDER (the order of the
gallery images in the protocol list, then the detection order inside an image): of two
detections with equal similarity the earlier one ranks higher. Average precision has
scikit-learn's ``average_precision_score`` semantics, where tied scores share one threshold
and tie-breaking cannot change AP.
"""
from dataclasses import dataclass, field
from typing import List

import numpy as np

TOPK = (1, 5, 10)


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row i of [N,4] ``a`` with row i of [N,4] ``b``, [x1,y1,x2,y2] with no +1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou(boxes: np.ndarray, box) -> np.ndarray:
    """IoU of [N,4] boxes against one box, [x1,y1,x2,y2] with no +1."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return paired_iou(boxes, np.broadcast_to(np.asarray(box, dtype=np.float64), boxes.shape))


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N,M] of [N,4] and [M,4] boxes, no +1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def positive_iou_threshold(gt_boxes):
    """The small-box rule per GT box (w, h): min(0.5, w*h / ((w+10)*(h+10)))."""
    gt = np.asarray(gt_boxes, dtype=np.float64)
    w, h = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
    return np.minimum(0.5, w * h / ((w + 10.0) * (h + 10.0)))


def pick_positives(sims, boxes, groups, gt_boxes):
    """The single positive of each positive image: index into the detections, or -1.

    ``sims``/``boxes``/``groups`` are the detections of all positive images concatenated
    (``groups[i]`` = which positive image, in gallery order, detections in model order);
    ``gt_boxes`` [P,4] the query person's box per image. Per image, detections are visited by
    similarity (descending, ties: earlier detection first); the first whose IoU with the GT
    reaches the small-box threshold is the positive, every other detection is a negative.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    chosen = np.full(len(gt_boxes), -1, dtype=np.int64)
    if len(sims) == 0:
        return chosen
    ok = np.nonzero(paired_iou(boxes, gt_boxes[groups]) >= positive_iou_threshold(gt_boxes)[groups])[0]
    if len(ok) == 0:
        return chosen
    ok = ok[np.lexsort((ok, -sims[ok], groups[ok]))]
    first = np.ones(len(ok), dtype=bool)
    first[1:] = groups[ok[1:]] != groups[ok[:-1]]
    chosen[groups[ok[first]]] = ok[first]
    return chosen


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
    positive_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # similarities of the matched positives


def evaluate_query(sim_row, det_idx, img_offsets, pos_entries, store, want_top=False):
    """Score one query against its gallery (the reference ``evaluate_layout`` is tested against).

    sim_row: similarities of the query to ALL kept gallery detections (store order).
    det_idx: store indices of the detections of this query's gallery, in gallery order.
    img_offsets: per list position, the offset of that image's detections inside det_idx.
    pos_entries: list of (list_position, store image index, gt_box) for the gallery images that
      contain the query person (count_gt = len(pos_entries)).
    """
    y_score = sim_row[det_idx]
    pos_positions = np.zeros(0, dtype=np.int64)
    pos_scores = np.zeros(0, dtype=y_score.dtype)
    if pos_entries:
        list_pos = np.array([p for p, _, _ in pos_entries], dtype=np.int64)
        images = np.array([i for _, i, _ in pos_entries], dtype=np.int64)
        gts = np.array([g for _, _, g in pos_entries], dtype=np.float64).reshape(-1, 4)
        idx, offs = store.detection_indices(images)
        groups = np.repeat(np.arange(len(images)), store.counts[images])
        chosen = pick_positives(sim_row[idx], store.boxes[idx], groups, gts)
        hit = chosen >= 0
        local = chosen[hit] - offs[hit]  # detection index inside its image
        pos_positions = np.asarray(img_offsets)[list_pos[hit]] + local
        pos_scores = sim_row[idx[chosen[hit]]]
    count_gt = len(pos_entries)
    count_tp = len(pos_positions)
    ap = ap_from_positives(y_score, pos_scores) * count_tp / count_gt if count_tp else 0.0
    hits = [0] * len(TOPK)
    if count_tp:
        # The best-ranked positive: highest score, earliest in gallery order among equals.
        s_max = pos_scores.max()
        best = _rank(y_score, s_max, int(pos_positions[pos_scores == s_max].min()))
        hits = [int(best < k) for k in TOPK]
    top = _top_list(y_score, det_idx, set(pos_positions.tolist()), max(TOPK)) if want_top else []
    return QueryResult(ap=ap, count_gt=count_gt, count_tp=count_tp, hits=hits, top=top, positive_scores=pos_scores)


class SimilarityHistogram:
    """Counts of query-to-detection similarities, true matches (the positives search picks) apart
    from every other detection of the query's gallery; similarities are clipped to [-1, 1]."""

    def __init__(self, bins: int = 40):
        self.edges = np.linspace(-1.0, 1.0, bins + 1)
        self.positive = np.zeros(bins, dtype=np.int64)
        self.all = np.zeros(bins, dtype=np.int64)
        self.sums = {"positive": 0.0, "all": 0.0}

    def add(self, y_score: np.ndarray, positive_scores: np.ndarray) -> None:
        y, p = np.clip(y_score, -1.0, 1.0), np.clip(positive_scores, -1.0, 1.0)
        self.all += np.histogram(y, self.edges)[0]
        self.positive += np.histogram(p, self.edges)[0]
        self.sums["all"] += float(y.sum())
        self.sums["positive"] += float(p.sum())

    def as_dict(self) -> dict:
        negative = self.all - self.positive
        n_pos, n_neg = int(self.positive.sum()), int(negative.sum())
        return {
            "bin_edges": [float(e) for e in self.edges],
            "positive": self.positive.tolist(),
            "negative": negative.tolist(),
            "mean_positive": self.sums["positive"] / n_pos if n_pos else None,
            "mean_negative": (self.sums["all"] - self.sums["positive"]) / n_neg if n_neg else None,
        }


def _rank(y_score, score, position) -> int:
    """0-based rank: strictly higher scores, plus equal scores earlier in gallery order."""
    higher = int(np.count_nonzero(y_score > score))
    ties_before = int(np.count_nonzero(y_score[:position] == score))
    return higher + ties_before


def rank_by_similarity(y_score, k=None) -> np.ndarray:
    """Positions of the ``k`` highest of ``y_score`` (all when None), best first, equal scores in
    gallery order (the earlier position first): how every ranked result list is ordered, the
    evaluator's top-10 lists and ``galw.search``'s answers alike. Only the scores at or above the
    k-th best are sorted."""
    y_score = np.asarray(y_score)
    k = len(y_score) if k is None else min(int(k), len(y_score))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(-y_score, k - 1)[k - 1]
    cand = np.nonzero(-y_score <= kth)[0]
    return cand[np.lexsort((cand, -y_score[cand]))][:k]


def _top_list(y_score, det_idx, positive_positions, k):
    """The k best (store index, score, correct), ranked by ``rank_by_similarity``."""
    return [
        {"det": int(det_idx[p]), "similarity": float(y_score[p]), "correct": int(p) in positive_positions}
        for p in rank_by_similarity(y_score, k)
    ]


def _descending_bits(y):
    """uint64 codes of float32 ``y`` whose ascending order is descending ``y`` (equal floats, equal codes)."""
    u = (np.asarray(y, dtype=np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # -0.0 -> +0.0
    ascending = np.where(u >= 0x80000000, 0xFFFFFFFF - u, u + 0x80000000)
    return np.uint64(0xFFFFFFFF) - ascending


@dataclass
class GalleryLayout:
    """The detections of a batch of queries' galleries laid out in one array, query after query,
    each query's gallery in gallery order (its images' detections in store order).

    Entry ``e`` is store detection ``det_idx[e]`` of query ``q_of[e]``; gallery image ``j`` of
    query ``q`` (pair ``pair_start[q] + j``) starts at entry ``img_start[pair_start[q] + j]``.
    """

    images: np.ndarray  # [pairs] gallery image of every (query, list position), query after query
    n_img: np.ndarray  # [Q] gallery length per query
    counts: np.ndarray  # [pairs] detections of each pair's image
    img_start: np.ndarray  # [pairs] first entry of each pair
    pair_start: np.ndarray  # [Q] first pair of each query
    det_idx: np.ndarray  # [entries] store detection index
    q_of: np.ndarray  # [entries] query (0..Q-1)

    @classmethod
    def build(cls, images, n_img, store):
        images = np.asarray(images, dtype=np.int64)
        n_img = np.asarray(n_img, dtype=np.int64)
        counts = store.counts[images]
        img_start = np.cumsum(counts) - counts
        total = int(counts.sum())
        det_idx = np.repeat(store.starts[images] - img_start, counts) + np.arange(total, dtype=np.int64)
        q_of = np.repeat(np.repeat(np.arange(len(n_img), dtype=np.int64), n_img), counts)
        return cls(images, n_img, counts, img_start, np.cumsum(n_img) - n_img, det_idx, q_of)

    @property
    def num_queries(self):
        return len(self.n_img)


def evaluate_queries(sims, galleries, positives, store, want_top=False, rows=None, histogram=None):
    """``evaluate_query`` for a batch of queries at once, with identical results (tested): their
    galleries laid out (``GalleryLayout``) and scored by ``evaluate_layout``.

    sims: [R, num store detections] similarities (rows of one product); query i uses row ``rows[i]``
      (default: row i).
    galleries: per query, its gallery image indices (store order of images, no repeats).
    positives: per query, [(list position, image, gt box)] of the images holding the person.
    histogram: a SimilarityHistogram that takes the batch's similarities and its positives' ones.
    """
    nq = len(galleries)
    rows = np.arange(nq, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    n_img = np.array([len(g) for g in galleries], dtype=np.int64)
    images = np.concatenate([np.asarray(g, np.int64) for g in galleries]) if nq else np.zeros(0, np.int64)
    layout = GalleryLayout.build(images, n_img, store)
    y = sims[rows[layout.q_of], layout.det_idx]
    pq = np.array([q for q, p in enumerate(positives) for _ in p], dtype=np.int64)
    plist = np.array([e[0] for p in positives for e in p], dtype=np.int64)
    pgt = np.array([e[2] for p in positives for e in p], dtype=np.float64).reshape(-1, 4)
    return evaluate_layout(y, layout, pq, plist, pgt, store, want_top, histogram)


def evaluate_layout(y, layout, pos_query, pos_list, pos_box, store, want_top=False, histogram=None):
    """Per-query results of a batch laid out as ``layout`` with similarities ``y`` (one per entry).

    pos_query, pos_list, pos_box: the positive gallery entries (query, list position, gt box), each
    query's in gallery order. Picking positives, AP, top-k and the top-10 list take a fixed number
    of numpy calls per batch; only the scores at or above a query's lowest positive score are sorted.
    """
    nq = layout.num_queries
    q_of, img_start = layout.q_of, layout.img_start
    per_query = np.bincount(q_of, minlength=nq)
    seg_start = np.cumsum(per_query) - per_query

    # The single positive of every positive image (as pick_positives, all queries at once).
    pq = np.asarray(pos_query, dtype=np.int64)
    pair = layout.pair_start[pq] + np.asarray(pos_list, dtype=np.int64)
    count_gt = np.bincount(pq, minlength=nq)
    pcount = layout.counts[pair]
    offs = np.cumsum(pcount) - pcount
    groups = np.repeat(np.arange(len(pq)), pcount)
    at = np.repeat(img_start[pair] - offs, pcount) + np.arange(int(pcount.sum()), dtype=np.int64)
    idx = layout.det_idx[at]
    chosen = pick_positives(y[at], store.boxes[idx], groups, pos_box)
    hit = chosen >= 0
    pos_at = at[chosen[hit]]  # positions in the layout
    pos_q = pq[hit]
    pos_s = y[pos_at]
    count_tp = np.bincount(pos_q, minlength=nq)
    if histogram is not None:
        histogram.add(y, pos_s)

    # AP: per positive, #positives and #all with score >= its score, in its query.
    min_pos = np.full(nq, np.inf, dtype=np.float64)
    np.minimum.at(min_pos, pos_q, pos_s.astype(np.float64))
    cand = np.flatnonzero(y >= min_pos[q_of])
    key = (q_of[cand].astype(np.uint64) << np.uint64(32)) | _descending_bits(y[cand])
    order = np.argsort(key, kind="stable")  # stable: equal keys stay in layout order
    key_sorted, cand_sorted = key[order], cand[order]
    query_key = np.arange(nq, dtype=np.uint64) << np.uint64(32)
    cand_start = np.searchsorted(key_sorted, query_key, side="left")
    pkey = (pos_q.astype(np.uint64) << np.uint64(32)) | _descending_bits(pos_s)
    n_ge = np.searchsorted(key_sorted, pkey, side="right") - cand_start[pos_q]
    pkey_sorted = np.sort(pkey)
    tp_ge = np.searchsorted(pkey_sorted, pkey, side="right") - np.searchsorted(pkey_sorted, query_key, side="left")[pos_q]
    ap_sum = np.bincount(pos_q, weights=tp_ge / n_ge, minlength=nq)
    tp = np.maximum(count_tp, 1)
    ap = np.where(count_tp > 0, ap_sum / tp * count_tp / np.maximum(count_gt, 1), 0.0)

    # top-k: 0-based rank of the best positive = its index among the sorted candidates (ties by layout).
    rank_of = np.empty(len(cand), dtype=np.int64)  # by index into cand (ascending layout positions)
    rank_of[order] = np.arange(len(cand)) - cand_start[q_of[cand_sorted]]
    pos_rank = rank_of[np.searchsorted(cand, pos_at)]
    best = np.full(nq, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, pos_q, pos_rank)
    hits = np.stack([best < k for k in TOPK], axis=1).astype(int)

    tops = [[] for _ in range(nq)]
    if want_top:
        tops = _top_lists(y, layout.det_idx, q_of, seg_start, per_query, pos_at, max(TOPK))
    pos_order = np.argsort(pos_q, kind="stable")
    pos_sorted, pos_end = pos_s[pos_order], np.cumsum(count_tp).tolist()
    pos_split = [pos_sorted[a:b] for a, b in zip([0, *pos_end[:-1]], pos_end)]
    return [
        QueryResult(ap=float(a), count_gt=int(g), count_tp=int(t), hits=h, top=top, positive_scores=p)
        for a, g, t, h, top, p in zip(ap.tolist(), count_gt.tolist(), count_tp.tolist(), hits.tolist(), tops,
                                      pos_split)
    ]


def _top_lists(y, det_idx, q_of, seg_start, per_query, pos_at, k):
    """Per query, its k best layout entries as ``rank_by_similarity`` orders them (tested equal).

    Each query's k-th best score comes from one ``np.partition`` of the batch's scores padded to a
    matrix; only entries at or above it are sorted.
    """
    nq = len(per_query)
    width = int(per_query.max(initial=0))
    if width == 0:
        return [[] for _ in range(nq)]
    padded = np.full((nq, width), -np.inf, dtype=y.dtype)
    # query-contiguous entries: flat positions by a repeat (cheaper than a 2-D scatter)
    padded.reshape(-1)[np.arange(len(y)) + np.repeat(np.arange(nq) * width - seg_start, per_query)] = y
    m = min(k, width)
    kth = np.partition(padded, width - m, axis=1)[:, width - m]  # -inf when a query has fewer than k
    cand = np.flatnonzero(y >= kth[q_of])
    cand = cand[np.lexsort((cand, -y[cand].astype(np.float64), q_of[cand]))]
    first = np.searchsorted(q_of[cand], np.arange(nq), side="left")
    rank = np.arange(len(cand)) - first[q_of[cand]]
    cand = cand[rank < k]
    positive = np.zeros(len(y), dtype=bool)
    positive[pos_at] = True
    tops = [[] for _ in range(nq)]
    for q, d, s, c in zip(q_of[cand].tolist(), det_idx[cand].tolist(), y[cand].tolist(), positive[cand].tolist()):
        tops[q].append({"det": d, "similarity": s, "correct": c})
    return tops
