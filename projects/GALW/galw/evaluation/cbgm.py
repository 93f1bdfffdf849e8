"""Context bipartite graph matching (CBGM), the test-time re-scoring of SeqNet and COAT.

SeqNet (serend1p1ty/SeqNet, eval_func.py) re-scores a query against the gallery images that hold
its ``top_detections`` most similar detections: the query person and the ``context - 1``
highest-scoring other people of the query image form one side of a bipartite graph, the
detections of the gallery image the other, edges weighted by embedding similarity. The detection
matched to the query person in the maximum-weight matching gets the largest similarity of any
matched pair; every other similarity stays. The matching is scipy's ``linear_sum_assignment``
(SeqNet runs its own Kuhn-Munkres; both give a maximum-weight matching).
"""
import numpy as np
from scipy.optimize import linear_sum_assignment

from .search_metrics import box_iou

#: SeqNet's (top_detections, context) per evaluator type: k1, k2 of its eval_search_{cuhk,prw}.
SEQNET_CBGM = {"cuhk_sysu": (10, 3), "prw": (30, 4)}
#: Query-image detections overlapping the query box more than this are the query person itself
#: (SeqNet adds the query box with score 1 and runs NMS at 0.5 before taking its context).
SAME_PERSON_IOU = 0.5


def query_context(query_box, boxes, scores, embeddings, size):
    """Embeddings of the ``size`` highest-scoring query-image detections that are not the query person."""
    if size <= 0 or len(boxes) == 0:
        return np.zeros((0, embeddings.shape[1] if embeddings.ndim == 2 else 0), np.float32)
    others = np.flatnonzero(box_iou(boxes, query_box) <= SAME_PERSON_IOU)
    others = others[np.argsort(-scores[others], kind="stable")][:size]
    return np.asarray(embeddings[others], np.float32)


def cbgm_rescore(y_score, det_idx, query_emb, context, store, top_detections):
    """CBGM-revised similarities of one query over its gallery (same order as ``y_score``).

    y_score: similarities of the query to the detections ``det_idx`` (store indices, gallery order,
      each image's detections contiguous and in store order).
    context: [C, D] embeddings of the other people in the query image.
    """
    out = np.array(y_score, copy=True)
    if len(out) == 0:
        return out
    people = np.vstack([np.asarray(query_emb, np.float32)[None], np.asarray(context, np.float32).reshape(-1, len(query_emb))])
    top = np.argsort(-out, kind="stable")[:top_detections]
    image_of = store.image_of[det_idx[top]]
    _, first = np.unique(image_of, return_index=True)
    for p in top[np.sort(first)]:
        img = store.image_of[det_idx[p]]
        begin = store.starts[img]
        rows = np.arange(begin, begin + store.counts[img])
        weights = people @ store.embeddings[rows].T
        r, c = linear_sum_assignment(weights, maximize=True)
        if 0 in r:
            first_position = p - (det_idx[p] - begin)  # where this image's detections start in y_score
            out[first_position + c[r == 0][0]] = weights[r, c].max()
    return out
