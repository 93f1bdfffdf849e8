"""Detection AP / recall on the gallery images (the person-search convention, not COCO)."""
import numpy as np
from sklearn.metrics import average_precision_score

from .search_metrics import box_iou_matrix


def mutual_argmax_matches(det_boxes, gt_boxes, iou_thresh=0.5):
    """Index of the matched GT per detection (-1 if none).

    A pair matches when its IoU >= ``iou_thresh`` and each is the other's best (argmax, the
    first index on ties), so every GT matches at most one detection and vice versa.
    """
    n_det, n_gt = len(det_boxes), len(gt_boxes)
    match = np.full(n_det, -1, dtype=np.int64)
    if n_det == 0 or n_gt == 0:
        return match
    iou = box_iou_matrix(det_boxes, gt_boxes)
    best_gt = iou.argmax(axis=1)
    best_det = iou.argmax(axis=0)
    dets = np.arange(n_det)
    ok = (best_det[best_gt] == dets) & (iou[dets, best_gt] >= iou_thresh)
    match[ok] = best_gt[ok]
    return match


def evaluate_detection(images, iou_thresh=0.5, labeled_only=False):
    """{"AP", "recall"} (fractions) over ``images``: dicts with det_boxes, det_scores, gt_boxes, gt_pids.

    ``labeled_only`` keeps only GT with person_id >= 0 and skips images without any (their
    detections are not scored), as the reference implementation does; only recall is meaningful.
    """
    y_true, y_score = [], []
    count_tp = count_gt = 0
    for im in images:
        gt = np.asarray(im["gt_boxes"], dtype=np.float64).reshape(-1, 4)
        if labeled_only:
            gt = gt[np.asarray(im["gt_pids"]) >= 0]
            if len(gt) == 0:
                continue
        match = mutual_argmax_matches(im["det_boxes"], gt, iou_thresh)
        y_true.append(match >= 0)
        y_score.append(np.asarray(im["det_scores"], dtype=np.float64))
        count_tp += int((match >= 0).sum())
        count_gt += len(gt)
    if count_gt == 0:
        raise ValueError("Detection evaluation: the gallery records have no ground-truth boxes.")
    recall = count_tp / count_gt
    y_true = np.concatenate(y_true) if y_true else np.zeros(0, bool)
    y_score = np.concatenate(y_score) if y_score else np.zeros(0)
    ap = float(average_precision_score(y_true, y_score)) * recall if count_tp else 0.0
    return {"AP": ap, "recall": recall}
