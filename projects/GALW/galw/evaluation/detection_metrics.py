"""Detection AP / recall on the gallery images (the person-search convention, not COCO)."""
import numpy as np
from sklearn.metrics import average_precision_score

from .search_metrics import box_iou_matrix, paired_iou


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


def _first_argmax(values, segment, num_segments):
    """Per segment, the position of its first maximum in ``values`` (-1 if empty); ``segment`` in any
    order. Two unbuffered ufunc reductions, O(n): no sort."""
    best = np.full(num_segments, -np.inf)
    np.maximum.at(best, segment, values)
    at_max = np.flatnonzero(values == best[segment])
    first = np.full(num_segments, len(values), dtype=np.int64)
    np.minimum.at(first, segment[at_max], at_max)
    return np.where(first < len(values), first, -1)


def batched_mutual_argmax_matches(det_boxes, det_image, gt_boxes, gt_image, iou_thresh=0.5):
    """``mutual_argmax_matches`` of every image at once: the matched GT (global index) per detection, or -1.

    ``det_image`` / ``gt_image``: the image of each detection / GT box, ascending.
    """
    n_det, n_gt = len(det_boxes), len(gt_boxes)
    match = np.full(n_det, -1, dtype=np.int64)
    if n_det == 0 or n_gt == 0:
        return match
    n_images = int(max(det_image.max(initial=-1), gt_image.max(initial=-1))) + 1
    gt_count = np.bincount(gt_image, minlength=n_images)
    gt_start = np.cumsum(gt_count) - gt_count
    per_det = gt_count[det_image]
    pair_det = np.repeat(np.arange(n_det), per_det)
    offsets = np.cumsum(per_det) - per_det
    pair_gt = np.repeat(gt_start[det_image] - offsets, per_det) + np.arange(int(per_det.sum()))
    if len(pair_det) == 0:
        return match
    iou = paired_iou(det_boxes[pair_det], gt_boxes[pair_gt])
    # pairs are ordered by det, then gt: the first maximum is the lowest gt of a det, the lowest det of a gt
    best_gt_pair = _first_argmax(iou, pair_det, n_det)
    best_det_pair = _first_argmax(iou, pair_gt, n_gt)
    has = best_gt_pair >= 0
    dets = np.flatnonzero(has)
    p = best_gt_pair[has]
    ok = (best_det_pair[pair_gt[p]] == p) & (iou[p] >= iou_thresh)
    match[dets[ok]] = pair_gt[p[ok]]
    return match


def evaluate_detection(images, iou_thresh=0.5, labeled_only=False):
    """{"AP", "recall"} (fractions) over ``images``: dicts with det_boxes, det_scores, gt_boxes, gt_pids."""
    def cat(key, width):
        return np.concatenate([np.zeros((0, width))] + [np.asarray(im[key], np.float64).reshape(-1, width)
                                                          for im in images]).reshape(
            -1, *([width] if width > 1 else []))

    dets = cat("det_boxes", 4)
    gts = cat("gt_boxes", 4)
    det_image = np.repeat(np.arange(len(images)), [len(np.reshape(im["det_scores"], -1)) for im in images])
    gt_image = np.repeat(np.arange(len(images)), [len(np.reshape(im["gt_pids"], -1)) for im in images])
    pids = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(im["gt_pids"], np.int64).reshape(-1) for im in images])
    return evaluate_detection_arrays(dets, cat("det_scores", 1), det_image, gts, pids, gt_image, iou_thresh,
                                     labeled_only)


def evaluate_detection_arrays(det_boxes, det_scores, det_image, gt_boxes, gt_pids, gt_image, iou_thresh=0.5,
                              labeled_only=False):
    """``evaluate_detection`` of all images concatenated: ``det_image`` / ``gt_image`` give each box's
    image (ascending).

    ``labeled_only`` keeps only GT with person_id >= 0 and skips images without any (their
    detections are not scored), as the reference implementation does, and gives recall only (an AP
    over a subset of the persons is not a detection AP). All images are matched in one vectorised
    pass (``batched_mutual_argmax_matches``).
    """
    if labeled_only:
        keep = np.asarray(gt_pids) >= 0
        gt_boxes, gt_image = gt_boxes[keep], gt_image[keep]
        scored = np.isin(det_image, gt_image)
        det_boxes, det_scores, det_image = det_boxes[scored], det_scores[scored], det_image[scored]
    count_gt = len(gt_boxes)
    if count_gt == 0:
        raise ValueError("Detection evaluation: the gallery records have no ground-truth boxes.")
    match = batched_mutual_argmax_matches(det_boxes, det_image, gt_boxes, gt_image, iou_thresh)
    y_true = match >= 0
    count_tp = int(y_true.sum())
    recall = count_tp / count_gt
    if labeled_only:
        return {"recall": recall}
    ap = float(average_precision_score(y_true, det_scores)) * recall if count_tp else 0.0
    return {"AP": ap, "recall": recall}
