"""Attribute metrics on the detections matched to annotated gallery boxes."""
import logging

import numpy as np
from sklearn.metrics import average_precision_score

logger = logging.getLogger(__name__)


def evaluate_attributes(probs, labels, names, threshold=0.5):
    """{"mA", "mAP", "AP_<name>"} in percent.

    mA is the pedestrian-attribute mean accuracy: per attribute (TP/P + TN/N) / 2 over the
    known labels (-1 = unknown is ignored), averaged over attributes that have both classes.
    AP per attribute is sklearn's average_precision_score over its known labels. Attributes
    with a single class among the known labels have neither; they are skipped and counted.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape:
        raise ValueError(f"attribute_probs {probs.shape} and record attributes {labels.shape} differ in shape.")
    results, accs, aps, skipped = {}, [], [], []
    for a, name in enumerate(names):
        known = labels[:, a] >= 0
        y, p = labels[known, a] == 1, probs[known, a]
        if y.all() or not y.any():
            skipped.append(name)
            continue
        pred = p >= threshold
        accs.append(0.5 * ((pred & y).sum() / y.sum() + (~pred & ~y).sum() / (~y).sum()))
        ap = float(average_precision_score(y, p))
        aps.append(ap)
        results[f"AP_{name}"] = 100.0 * ap
    if skipped:
        logger.warning(f"Attribute metrics: {len(skipped)} attribute(s) skipped (one class only): {skipped}")
    if not accs:
        raise ValueError("Attribute metrics: no attribute has both positive and negative known labels.")
    results["mA"] = 100.0 * float(np.mean(accs))
    results["mAP"] = 100.0 * float(np.mean(aps))
    return results
