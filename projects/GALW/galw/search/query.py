"""Answering a query against a search index: the gallery people ranked by similarity to the query
box (the evaluator's ranking, ``rank_by_similarity``), written as ``topk.json`` and ``topk.png``."""
import json
import logging
import os

import cv2

from ..evaluation.search_metrics import rank_by_similarity
from ..visualization import plot_search_results
from .gallery import read_video_frame, timestamp

logger = logging.getLogger(__name__)


def rank(index, query_embedding, topk):
    """The ``topk`` gallery detections most similar to the query (dot product of unit vectors),
    equal similarities in index order as the evaluator ranks them."""
    if index["embeddings"].shape[0] == 0:
        return []
    if index["embeddings"].shape[1] != query_embedding.shape[0]:
        raise ValueError(
            f"search: query embedding has {query_embedding.shape[0]} dims but the index has "
            f"{index['embeddings'].shape[1]} (built with another model?)"
        )
    sims = index["embeddings"] @ query_embedding
    order = rank_by_similarity(sims.numpy(), topk)
    frames = index.get("frames") or [None] * len(index["images"])
    hits = []
    for r, j in enumerate(order.tolist()):
        owner = int(index["image_index"][j])
        hit = {
            "rank": r + 1,
            "image": index["images"][owner],
            "box": [round(float(v), 2) for v in index["boxes"][j]],
            "similarity": float(sims[j]),
            "score": float(index["scores"][j]),
            "correct": None,
        }
        if frames[owner] is not None:
            time = index["times"][owner]
            hit.update(video=hit["image"], frame=frames[owner], time=time, timestamp=timestamp(time),
                       label=f"{os.path.basename(hit['image'])} frame {frames[owner]}, {timestamp(time)}")
        hits.append(hit)
    return hits


def _pictured(hits, out_dir):
    """The hits as the picture draws them: a video hit's frame is written to OUT/frames/ and shown."""
    pictured = []
    for hit in hits:
        if "frame" in hit:
            stem = os.path.splitext(os.path.basename(hit["video"]))[0]
            path = os.path.join(out_dir, "frames", f"{stem}_frame{hit['frame']:06d}.png")
            if not os.path.isfile(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cv2.imwrite(path, read_video_frame(hit["video"], hit["frame"]))
            hit = dict(hit, image=path)
        pictured.append(hit)
    return pictured


def answer_query(search_model, index, query_image, box, topk, out_dir, index_path=None):
    """Rank the index for one query; write OUT/topk.json and OUT/topk.png; return the JSON dict."""
    query_image = os.path.abspath(query_image)
    hits = rank(index, search_model.embed_query(query_image, box), topk)
    result = {
        "query_image": query_image,
        "query_box": [float(v) for v in box],
        "index": os.path.abspath(index_path) if index_path else None,
        "gallery_dir": index["gallery_dir"],
        "num_gallery_images": len(index["images"]),
        "num_detections": int(index["embeddings"].shape[0]),
        "topk": hits,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "topk.json"), "w") as f:
        json.dump(result, f, indent=2)
    if hits:
        plot_search_results([dict(result, topk=_pictured(hits, out_dir))], os.path.join(out_dir, "topk.png"),
                            topk=topk, title="top-k search results")
    else:
        logger.warning("search: the gallery has no detections; no picture written")
    return result
