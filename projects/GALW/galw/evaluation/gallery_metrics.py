"""Detection and attribute metrics of a gallery pass, from the gallery records and the kept outputs."""
import logging

import numpy as np

from .attribute_metrics import evaluate_attributes
from .detection_metrics import evaluate_detection_arrays, mutual_argmax_matches

logger = logging.getLogger(__name__)


def gt_arrays(record):
    """(GT boxes [G,4], person ids [G]) of a dataset record, in annotation order."""
    annos = record.get("annotations", [])
    boxes = np.array([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4)
    pids = np.array([int(a["person_id"]) for a in annos], dtype=np.int64)
    return boxes, pids


def gallery_detection_metrics(records, ordered, iou_thresh):
    """Detection AP and recall (percent) of the outputs ``ordered`` (one per record, same order)."""
    annos = [r.get("annotations", []) for r in records]
    gt_boxes = np.array([a["bbox"] for an in annos for a in an], dtype=np.float64).reshape(-1, 4)
    gt_pids = np.array([int(a["person_id"]) for an in annos for a in an], dtype=np.int64)
    gt_image = np.repeat(np.arange(len(annos)), [len(an) for an in annos])
    det_boxes = np.concatenate([np.zeros((0, 4))] + [g["det_boxes"] for g in ordered]).astype(np.float64)
    det_scores = np.concatenate([np.zeros(0)] + [g["det_scores"] for g in ordered]).astype(np.float64)
    det_image = np.repeat(np.arange(len(ordered)), [len(g["det_scores"]) for g in ordered])
    args = (det_boxes, det_scores, det_image, gt_boxes, gt_pids, gt_image, iou_thresh)
    full = evaluate_detection_arrays(*args)
    labeled = evaluate_detection_arrays(*args, labeled_only=True)
    return {"AP": 100.0 * full["AP"], "recall": 100.0 * full["recall"], "recall_labeled": 100.0 * labeled["recall"]}


def gallery_attribute_metrics(records, ordered, iou_thresh, attr_thresh, attribute_names, dataset_name):
    """Attribute metrics of the detections matched to annotated GT boxes; None when the outputs
    carry no attribute probabilities, the records no attributes, or no detection matched."""
    with_probs = [g["det_attr"] is not None for g in ordered]
    if not any(with_probs):
        return None
    if not all(with_probs):
        raise ValueError(f"Only {sum(with_probs)} of {len(ordered)} gallery outputs have 'attribute_probs'.")
    if not any("attributes" in a for r in records for a in r.get("annotations", [])):
        logger.info(f"'{dataset_name}' records carry no attributes: attribute metrics not computed.")
        return None
    probs, labels = [], []
    for r, g in zip(records, ordered):
        gt_boxes, _ = gt_arrays(r)
        match = mutual_argmax_matches(g["det_boxes"], gt_boxes, iou_thresh)
        annos = r.get("annotations", [])
        for d in np.nonzero(match >= 0)[0]:
            a = annos[match[d]]
            if "attributes" in a:
                probs.append(g["det_attr"][d])
                labels.append(a["attributes"])
    if not probs:  # e.g. an early or untrained model: its search metrics still count
        logger.warning(
            f"Attribute metrics not computed: none of the {sum(len(g['det_boxes']) for g in ordered)} "
            f"gallery detections of '{dataset_name}' matched an annotated gallery box."
        )
        return None
    names = attribute_names or [f"attr{i}" for i in range(len(labels[0]))]
    return evaluate_attributes(np.stack(probs), np.array(labels), names, attr_thresh)
