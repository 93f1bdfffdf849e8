"""The attribute labels file: per-box binary attributes attached to dataset records by IoU.

Format (JSON): {"attribute_names": [...], "images": {"<image basename>": [{"bbox": [x1,y1,x2,y2],
"attributes": [1, 0, -1, ...]}, ...]}}; 1 present, 0 absent, -1 unknown.
"""
import json
import logging
import os

import numpy as np

from .matlab import MatFormatError

logger = logging.getLogger(__name__)

__all__ = ["AttributeFileError", "load_attribute_file", "attach_attributes"]


class AttributeFileError(ValueError):
    """The attribute labels file is malformed or disagrees with the dataset."""


def load_attribute_file(path):
    """(attribute_names, {basename: [(bbox ndarray[4], attributes list)]}), validated."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing attribute labels file {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AttributeFileError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or "attribute_names" not in data or "images" not in data:
        raise AttributeFileError(f"{path}: expected an object with keys 'attribute_names' and 'images'")
    names = data["attribute_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise AttributeFileError(f"{path}: 'attribute_names' must be a non-empty list of strings")
    if not isinstance(data["images"], dict):
        raise AttributeFileError(f"{path}: 'images' must map image basenames to lists of boxes")
    images = {}
    for image, entries in data["images"].items():
        if not isinstance(entries, list):
            raise AttributeFileError(f"{path}: images[{image!r}] must be a list")
        parsed = []
        for k, e in enumerate(entries):
            where = f"{path}: images[{image!r}][{k}]"
            if not isinstance(e, dict) or "bbox" not in e or "attributes" not in e:
                raise AttributeFileError(f"{where}: expected {{'bbox': [x1,y1,x2,y2], 'attributes': [...]}}")
            box = e["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise AttributeFileError(f"{where}: 'bbox' must be 4 numbers [x1,y1,x2,y2], got {box!r}")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise AttributeFileError(f"{where}: empty bbox {box}")
            attrs = e["attributes"]
            if not isinstance(attrs, list) or len(attrs) != len(names) or any(
                    isinstance(a, bool) or a not in (-1, 0, 1) for a in attrs):
                raise AttributeFileError(
                    f"{where}: 'attributes' must be {len(names)} values in {{1, 0, -1}}, got {attrs!r}")
            parsed.append((np.asarray(box, dtype=np.float64), [int(a) for a in attrs]))
        images[image] = parsed
    return list(names), images


def _iou(a, b):
    """IoU between boxes a [N,4] and b [M,4] (xyxy)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def attach_attributes(records, path, iou_threshold=0.9, dropped=None):
    """Give every annotation an ``attributes`` list from the file box with IoU >= threshold.

    A file box matching no record box is an error (naming the file, image and box); record boxes
    with no file entry get all -1, counted in the log. ``dropped`` ({image basename: [(annotation
    file, what)]}, the loader's ``dropped``): when the unmatched box's image lost boxes at load, the
    annotation file is the culprit and the error (MatFormatError) names it first. Returns the
    attribute names.
    """
    dropped = dropped or {}
    names, images = load_attribute_file(path)
    unknown = [-1] * len(names)
    missing = 0
    for r in records:
        annos = r.get("annotations", [])
        base = os.path.basename(r["file_name"])
        entries = images.get(base, [])
        for a in annos:
            a["attributes"] = list(unknown)
        if not entries:
            missing += len(annos)
            continue
        fboxes = np.stack([b for b, _ in entries])
        rboxes = np.asarray([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4)
        iou = _iou(fboxes, rboxes) if len(annos) else np.zeros((len(entries), 0))
        matched = set()
        for k, (box, attrs) in enumerate(entries):
            j = int(iou[k].argmax()) if iou.shape[1] else -1
            if j < 0 or iou[k, j] < iou_threshold:
                if base in dropped:
                    source, what = dropped[base][0]
                    raise MatFormatError(
                        f"{source}: {what} of image {base} was dropped when loading, so box {box.tolist()} "
                        f"of {path} matches no annotated box (IoU >= {iou_threshold}); fix {source}")
                raise AttributeFileError(
                    f"{path}: box {box.tolist()} of image {base} matches no annotated box of the dataset "
                    f"(IoU >= {iou_threshold})")
            annos[j]["attributes"] = list(attrs)
            matched.add(j)
        missing += len(annos) - len(matched)
    if missing:
        logger.info("Attributes from %s: %d annotated boxes have no entry (all attributes -1)", path, missing)
    return names
