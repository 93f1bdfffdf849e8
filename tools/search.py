#!/usr/bin/env python
"""Person search on your own images with a trained GALW-PS model.

Direct (index the gallery in memory, answer one query):
    python tools/search.py search --config-file C.yaml --weights model_final.pth \\
        --gallery photos/ --query-image me.jpg --box 120 40 220 380 --topk 10 --out results/

Index once, query many times (the index stores the config and weights paths):
    python tools/search.py index --config-file C.yaml --weights model_final.pth --gallery photos/ --out index.pt
    python tools/search.py query --index index.pt --query-image me.jpg --box 120 40 220 380 --topk 10 --out results/

Every person the model detects in the gallery (score >= --score-thresh) is ranked by the
cosine similarity of its embedding to the query box's embedding. The top-k is written as
OUT/topk.json and OUT/topk.png.
"""
import argparse
import json
import logging
import os

import galw  # noqa: F401  (before detectron2: compat and registrations)
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from tqdm import tqdm

from galw import add_galw_config
from galw.engine import setup_logging
from galw.visualization import plot_search_results

logger = logging.getLogger("galw.search")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
INDEX_FORMAT = "galw-search-index/1"


def inference_resize_sizes(cfg):
    """(short side, long side) bounds of the test-time resize: the person-search mapper's
    INPUT.PS.TEST_SHORT_SIDE / TEST_LONG_SIDE (1500x900 by default).

    detectron2's ResizeShortestEdge(short, long) scales by min(short / min(h, w), long / max(h, w)),
    the same keep-ratio fit as the mapper's test resize, so gallery and query images are seen
    at the size the model was evaluated at.
    """
    return int(cfg.INPUT.PS.TEST_SHORT_SIDE), int(cfg.INPUT.PS.TEST_LONG_SIDE)


class SearchModel:
    """A built model with its weights and test-time resize, embedding one image at a time."""

    def __init__(self, config_file, weights, opts=()):
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"search: config file {config_file!r} not found")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"search: weights file {weights!r} not found")
        cfg = get_cfg()
        add_galw_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = cfg.MODEL.DEVICE if torch.cuda.is_available() else "cpu"
        cfg.freeze()
        self.cfg = cfg
        self.config_file, self.weights, self.opts = os.path.abspath(config_file), os.path.abspath(weights), list(opts)
        self.model = build_model(cfg)
        DetectionCheckpointer(self.model).load(weights)
        self.model.eval()
        short, longest = inference_resize_sizes(cfg)
        self.resize = T.ResizeShortestEdge([short, short], longest)
        self.input_format = cfg.INPUT.FORMAT

    def _inputs(self, path):
        image = detection_utils.read_image(path, format=self.input_format)
        height, width = image.shape[:2]
        tfm = self.resize.get_transform(image)
        resized = tfm.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, "file_name": path, "image_id": path}, tfm

    @torch.no_grad()
    def detect(self, path):
        """(boxes [N,4] in original coordinates, scores [N], embeddings [N,D]) of one image."""
        inputs, _ = self._inputs(path)
        inst = self.model([inputs])[0]["instances"].to("cpu")
        return inst.pred_boxes.tensor.float(), inst.scores.float(), inst.embeddings.float()

    @torch.no_grad()
    def embed_query(self, path, box):
        """The L2-normalised embedding [D] of ``box`` (x1,y1,x2,y2, original pixels) in image ``path``."""
        inputs, tfm = self._inputs(path)
        h, w = inputs["height"], inputs["width"]
        x1, y1, x2, y2 = [float(v) for v in box]
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ValueError(f"search: query box {list(box)} is not inside {path!r} ({w}x{h}) with x1<x2, y1<y2")
        resized_box = tfm.apply_box(np.array([[x1, y1, x2, y2]], dtype=np.float32))
        query = Instances(tuple(inputs["image"].shape[1:]))
        query.gt_boxes = Boxes(torch.as_tensor(resized_box, dtype=torch.float32))
        query.gt_pids = torch.tensor([-1], dtype=torch.int64)
        inputs["query_instances"] = query
        return self.model([inputs])[0]["query_embedding"].to("cpu").float().flatten()


def list_gallery_images(gallery_dir):
    """Sorted image paths directly inside ``gallery_dir`` (other files are counted and logged)."""
    if not os.path.isdir(gallery_dir):
        raise FileNotFoundError(f"search: gallery folder {gallery_dir!r} not found")
    names = sorted(os.listdir(gallery_dir))
    images = [os.path.join(gallery_dir, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    others = len([n for n in names if os.path.isfile(os.path.join(gallery_dir, n))]) - len(images)
    if others:
        logger.info("search: %d non-image file(s) in %s ignored", others, gallery_dir)
    if not images:
        raise ValueError(f"search: no images ({', '.join(IMAGE_EXTENSIONS)}) in gallery folder {gallery_dir!r}")
    return images


def build_index(search_model, gallery_dir, score_thresh=0.5):
    """Detect and embed every person in the gallery; returns the index dict (fields listed in docs/tools.md)."""
    images = list_gallery_images(gallery_dir)
    boxes, scores, embeddings, owners = [], [], [], []
    dropped = 0
    for i, path in enumerate(tqdm(images, desc="indexing gallery", unit="img")):
        b, s, e = search_model.detect(os.path.abspath(path))
        keep = s >= score_thresh
        dropped += int((~keep).sum())
        boxes.append(b[keep])
        scores.append(s[keep])
        embeddings.append(e[keep])
        owners.append(torch.full((int(keep.sum()),), i, dtype=torch.int64))
    logger.info("search: %d detections kept in %d images, %d below score %.2f dropped",
                sum(len(s) for s in scores), len(images), dropped, score_thresh)
    dim = embeddings[0].shape[1] if embeddings else 0
    return {
        "format": INDEX_FORMAT,
        "config_file": search_model.config_file,
        "weights": search_model.weights,
        "opts": search_model.opts,
        "score_thresh": float(score_thresh),
        "gallery_dir": os.path.abspath(gallery_dir),
        "images": [os.path.abspath(p) for p in images],
        "image_index": torch.cat(owners),
        "boxes": torch.cat(boxes).reshape(-1, 4),
        "scores": torch.cat(scores),
        "embeddings": torch.cat(embeddings).reshape(-1, dim),
    }


def save_index(index, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(index, path)


def load_index(path):
    index = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: not a search index (expected field format == {INDEX_FORMAT!r})")
    return index


def rank(index, query_embedding, topk):
    """The ``topk`` gallery detections most similar to the query (dot product of unit vectors)."""
    if index["embeddings"].shape[0] == 0:
        return []
    if index["embeddings"].shape[1] != query_embedding.shape[0]:
        raise ValueError(
            f"search: query embedding has {query_embedding.shape[0]} dims but the index has "
            f"{index['embeddings'].shape[1]} (built with another model?)"
        )
    sims = index["embeddings"] @ query_embedding
    order = torch.sort(sims, descending=True, stable=True).indices[:topk]
    return [
        {
            "rank": r + 1,
            "image": index["images"][int(index["image_index"][j])],
            "box": [round(float(v), 2) for v in index["boxes"][j]],
            "similarity": float(sims[j]),
            "score": float(index["scores"][j]),
            "correct": None,
        }
        for r, j in enumerate(order.tolist())
    ]


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
        plot_search_results([result], os.path.join(out_dir, "topk.png"), topk=topk, title="top-k search results")
    else:
        logger.warning("search: the gallery has no detections; no picture written")
    return result


def _add_model_args(p, required=True):
    p.add_argument("--config-file", required=required, help="the model's config")
    p.add_argument("--weights", required=required, help="trained weights (.pth)")


def _add_query_args(p):
    p.add_argument("--query-image", required=True)
    p.add_argument("--box", required=True, nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"))
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder for topk.json and topk.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_search = sub.add_parser("search", help="index a gallery folder in memory and answer one query")
    _add_model_args(p_search)
    p_search.add_argument("--gallery", required=True, help="folder of gallery images")
    p_search.add_argument("--score-thresh", type=float, default=0.5)
    _add_query_args(p_search)
    p_index = sub.add_parser("index", help="detect and embed every person of a gallery folder, save to disk")
    _add_model_args(p_index)
    p_index.add_argument("--gallery", required=True, help="folder of gallery images")
    p_index.add_argument("--score-thresh", type=float, default=0.5)
    p_index.add_argument("--out", required=True, help="index file to write (e.g. index.pt)")
    p_query = sub.add_parser("query", help="answer a query against a saved index")
    p_query.add_argument("--index", required=True)
    _add_model_args(p_query, required=False)
    _add_query_args(p_query)
    for p in (p_search, p_index, p_query):
        p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logging()

    if args.command == "query":
        index = load_index(args.index)
        model = SearchModel(args.config_file or index["config_file"], args.weights or index["weights"],
                            args.opts or index["opts"])
        result = answer_query(model, index, args.query_image, args.box, args.topk, args.out, args.index)
    else:
        model = SearchModel(args.config_file, args.weights, args.opts)
        index = build_index(model, args.gallery, args.score_thresh)
        if args.command == "index":
            save_index(index, args.out)
            print(f"indexed {index['embeddings'].shape[0]} people in {len(index['images'])} images -> {args.out}")
            return index
        result = answer_query(model, index, args.query_image, args.box, args.topk, args.out)
    for hit in result["topk"]:
        print(f"{hit['rank']:>3}  {hit['similarity']:.4f}  {hit['image']}  {hit['box']}")
    print(f"wrote {os.path.join(args.out, 'topk.json')}")
    return result


if __name__ == "__main__":
    main()
