"""A search index: every person the model detects in a gallery, with box, score and embedding,
saved as tensors, strings and numbers only so that loading it runs no code."""
import logging
import os
import pickle

import torch
from tqdm import tqdm

from .gallery import gallery_images

logger = logging.getLogger(__name__)

INDEX_FORMAT = "galw-search-index/1"


def build_index(search_model, gallery, score_thresh=None, sample_fps=1.0):
    """Detect and embed every person in the gallery; returns the index dict (fields listed in docs/tools.md).

    ``score_thresh`` None = the config's TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH (as the evaluation).
    ``sample_fps``: video frames taken per second (0 = all).
    """
    if score_thresh is None:
        score_thresh = search_model.score_thresh
    sources, frames, times = [], [], []
    boxes, scores, embeddings, owners = [], [], [], []
    dropped = 0
    for i, (source, frame, time, image) in enumerate(
        tqdm(gallery_images(gallery, sample_fps), desc="indexing gallery", unit="img")
    ):
        b, s, e = search_model.detect(image)
        keep = s >= score_thresh
        dropped += int((~keep).sum())
        sources.append(source)
        frames.append(frame)
        times.append(time)
        boxes.append(b[keep])
        scores.append(s[keep])
        embeddings.append(e[keep])
        owners.append(torch.full((int(keep.sum()),), i, dtype=torch.int64))
    logger.info("search: %d detections kept in %d images, %d below score %.2f dropped",
                sum(len(s) for s in scores), len(sources), dropped, score_thresh)
    dim = embeddings[0].shape[1] if embeddings else 0
    return {
        "format": INDEX_FORMAT,
        **search_model.source,
        "score_thresh": float(score_thresh),
        "sample_fps": float(sample_fps),
        "gallery_dir": os.path.abspath(gallery),
        "images": sources,
        "frames": frames,
        "times": times,
        "image_index": torch.cat(owners),
        "boxes": torch.cat(boxes).reshape(-1, 4),
        "scores": torch.cat(scores),
        "embeddings": torch.cat(embeddings).reshape(-1, dim),
    }


def save_index(index, path):
    """Tensors, strings and numbers only, so that loading with ``weights_only=True`` runs no code."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(index, path)


def load_index(path):
    """Load an index without running code: a file holding anything but tensors, strings, numbers,
    lists and dicts (e.g. a planted pickle) is refused, never executed."""
    try:
        index = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: not a search index: it holds objects other than tensors, strings and numbers, which are "
            f"not loaded (they could run code): {str(e).splitlines()[-1] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: not a search index (expected field format == {INDEX_FORMAT!r})")
    return index
