"""A hand-crafted person-search baseline: GT boxes as detections, colour histograms as embeddings.

Nothing is learned, so its search mAP gauges how hard a gallery is for appearance alone: a
trained model should beat it on re-id, and an untrained one sits below. It runs through the
same ``PersonSearchEvaluator`` as the models (same protocol, thresholds and JSON).

Embedding: an HSV histogram of the torso band and one of the legs band of the box (the central
part of its width, where the clothes are), each normalised to sum 1, square-rooted (so the dot
product of two embeddings is the Bhattacharyya coefficient of their histograms, Hellinger
style), concatenated and L2-normalised.
"""
import logging

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from .evaluator import PersonSearchEvaluator

__all__ = ["BODY_PARTS", "HSV_BINS", "colour_histogram_embeddings", "evaluate_colour_baseline"]

logger = logging.getLogger(__name__)

#: (top, bottom) of each part as fractions of the box height, and the central width fraction used.
BODY_PARTS = {"torso": (0.2, 0.55), "legs": (0.55, 1.0)}
CENTRAL_WIDTH = 0.6
#: Hue, saturation, value bins of each part's 3-D histogram (OpenCV HSV: H in [0, 180)).
HSV_BINS = (8, 4, 4)


def colour_histogram_embeddings(image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N, 2 * prod(HSV_BINS)] L2-normalised torso+legs HSV histograms of ``boxes`` (XYXY pixels)."""
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    h, w = hsv.shape[:2]
    dim = int(np.prod(HSV_BINS))
    out = np.zeros((len(boxes), len(BODY_PARTS) * dim), dtype=np.float32)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        margin = (x2 - x1) * (1 - CENTRAL_WIDTH) / 2
        cx1, cx2 = int(np.clip(np.floor(x1 + margin), 0, w - 1)), int(np.clip(np.ceil(x2 - margin), 1, w))
        for j, (top, bottom) in enumerate(BODY_PARTS.values()):
            py1 = int(np.clip(np.floor(y1 + top * (y2 - y1)), 0, h - 1))
            py2 = int(np.clip(np.ceil(y1 + bottom * (y2 - y1)), py1 + 1, h))
            part = np.ascontiguousarray(hsv[py1:py2, cx1:max(cx2, cx1 + 1)])
            hist = cv2.calcHist([part], [0, 1, 2], None, list(HSV_BINS), [0, 180, 0, 256, 0, 256]).reshape(-1)
            out[i, j * dim : (j + 1) * dim] = np.sqrt(hist / max(float(hist.sum()), 1.0))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def _read(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"colour baseline: cannot read image {path!r}")
    return img


def _instances(record, boxes, embeddings):
    inst = Instances((int(record["height"]), int(record["width"])))
    inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(boxes))
    inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    inst.embeddings = torch.as_tensor(embeddings, dtype=torch.float32).reshape(len(boxes), -1)
    return inst


def evaluate_colour_baseline(cfg, gallery_name: str, output_dir: str):
    """Metrics of the colour baseline on ``gallery_name`` (and its query set), evaluated by the
    config's ``PersonSearchEvaluator`` settings; writes ``output_dir/search_<gallery>.json``."""
    meta = MetadataCatalog.get(gallery_name)
    if "query_set" not in meta.as_dict():
        raise ValueError(f"colour baseline: '{gallery_name}' is not a person-search gallery (no query_set)")
    evaluator = PersonSearchEvaluator(cfg, gallery_name, output_dir=output_dir)
    evaluator.reset()
    gallery = DatasetCatalog.get(gallery_name)
    for r in gallery:
        boxes = np.array([a["bbox"] for a in r.get("annotations", [])], dtype=np.float64).reshape(-1, 4)
        evaluator.process([{"file_name": r["file_name"]}],
                          [{"instances": _instances(r, boxes, colour_histogram_embeddings(_read(r["file_name"]), boxes))}])
    for q in DatasetCatalog.get(meta.query_set):
        box = np.asarray(q["query"]["bbox"], dtype=np.float64).reshape(1, 4)
        emb = colour_histogram_embeddings(_read(q["file_name"]), box)
        query_instances = Instances((int(q["height"]), int(q["width"])))
        query_instances.gt_boxes = Boxes(torch.as_tensor(box, dtype=torch.float32))
        query_instances.gt_pids = torch.tensor([int(q["query"]["person_id"])])
        # The query box is also its image's only detection, for QUERY_FEATURE "best_iou_detection".
        evaluator.process([{"file_name": q["file_name"], "query_instances": query_instances}],
                          [{"instances": _instances(q, box, emb), "query_embedding": torch.from_numpy(emb[0])}])
    results = evaluator.evaluate()
    logger.info("colour baseline on %s: search %s", gallery_name, results.get("search"))
    return results
