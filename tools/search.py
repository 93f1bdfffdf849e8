#!/usr/bin/env python
"""Person search on your own images with a trained GALW-PS model.

Direct (index the gallery in memory, answer one query):
    python tools/search.py search --config-file C.yaml --weights model_final.pth \\
        --gallery photos/ --query-image me.jpg --box 120 40 220 380 --topk 10 --out results/

Index once, query many times (the index stores the config and weights paths):
    python tools/search.py index --config-file C.yaml --weights model_final.pth --gallery photos/ --out index.pt
    python tools/search.py query --index index.pt --query-image me.jpg --box 120 40 220 380 --topk 10 --out results/

With the TorchScript or ONNX programs of tools/export.py instead of config + weights:
    python tools/search.py index --exported exported/ [--exported-format onnx] --gallery photos/ --out index.pt

The gallery is a folder of images and/or videos, or one video file; videos are sampled at
--sample-fps frames per second (0 = every frame) and each hit names its video, frame and time.
Every person the model detects in the gallery (score >= --score-thresh, by default the config's
TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH) is ranked by the cosine similarity of its embedding to the
query box's embedding. The top-k is written as OUT/topk.json and OUT/topk.png.
"""
import argparse
import json
import logging
import math
import os
import pickle

import galw  # noqa: F401  (before detectron2: compat and registrations)
import cv2
import numpy as np
import torch
from PIL import Image
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from tqdm import tqdm

from galw.engine import setup_logging
from galw.export import FORMATS, build_inference_model, load_exported
from galw.visualization import plot_search_results

logger = logging.getLogger("galw.search")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
INDEX_FORMAT = "galw-search-index/1"


def inference_resize_sizes(cfg):
    """(short side, long side) bounds of the test-time resize: the person-search mapper's
    INPUT.PS.TEST_SHORT_SIDE / TEST_LONG_SIDE (1500x900 by default).

    detectron2's ResizeShortestEdge(short, long) scales by min(short / min(h, w), long / max(h, w)),
    the same keep-ratio fit as the mapper's test resize, so gallery and query images are seen
    at the size the model was evaluated at.
    """
    return int(cfg.INPUT.PS.TEST_SHORT_SIDE), int(cfg.INPUT.PS.TEST_LONG_SIDE)


class _ImageInputs:
    """The test-time resize and channel order shared by the eager and the exported model."""

    def __init__(self, short, longest, input_format):
        self.resize = T.ResizeShortestEdge([short, short], longest)
        self.input_format = input_format

    def _inputs(self, image):
        """Model input of ``image`` (a file path, or a BGR array such as a video frame) at the test size."""
        path = image if isinstance(image, str) else "<frame>"
        if isinstance(image, str):
            image = detection_utils.read_image(image, format=self.input_format)
        elif self.input_format != "BGR":
            image = detection_utils.convert_PIL_to_numpy(Image.fromarray(image[:, :, ::-1]), self.input_format)
        height, width = image.shape[:2]
        tfm = self.resize.get_transform(image)
        resized = tfm.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width, "file_name": path, "image_id": path}, tfm

    def _query_inputs(self, path, box):
        """(model input, the box [1, 4] at the test size) of a query box in original pixels."""
        inputs, tfm = self._inputs(path)
        h, w = inputs["height"], inputs["width"]
        x1, y1, x2, y2 = [float(v) for v in box]
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ValueError(f"search: query box {list(box)} is not inside {path!r} ({w}x{h}) with x1<x2, y1<y2")
        resized_box = tfm.apply_box(np.array([[x1, y1, x2, y2]], dtype=np.float32))
        return inputs, torch.as_tensor(resized_box, dtype=torch.float32)


class SearchModel(_ImageInputs):
    """A built model with its weights and test-time resize, embedding one image at a time."""

    def __init__(self, config_file, weights, opts=()):
        try:
            self.cfg, self.model = build_inference_model(config_file, weights, opts)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"search: {e}") from None
        self.config_file, self.weights, self.opts = os.path.abspath(config_file), os.path.abspath(weights), list(opts)
        self.source = {"config_file": self.config_file, "weights": self.weights, "opts": self.opts}
        self.score_thresh = self.cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH
        super().__init__(*inference_resize_sizes(self.cfg), self.cfg.INPUT.FORMAT)

    @torch.no_grad()
    def detect(self, image):
        """(boxes [N,4] in original coordinates, scores [N], embeddings [N,D]) of one image (path or BGR array)."""
        inputs, _ = self._inputs(image)
        inst = self.model([inputs])[0]["instances"].to("cpu")
        return inst.pred_boxes.tensor.float(), inst.scores.float(), inst.embeddings.float()

    @torch.no_grad()
    def embed_query(self, path, box):
        """The L2-normalised embedding [D] of ``box`` (x1,y1,x2,y2, original pixels) in image ``path``."""
        inputs, resized_box = self._query_inputs(path, box)
        query = Instances(tuple(inputs["image"].shape[1:]))
        query.gt_boxes = Boxes(resized_box)
        query.gt_pids = torch.tensor([-1], dtype=torch.int64)
        inputs["query_instances"] = query
        return self.model([inputs])[0]["query_embedding"].to("cpu").float().flatten()


class ExportedSearchModel(_ImageInputs):
    """The programs of tools/export.py (TorchScript, or ONNX run by onnxruntime) in place of the
    config and weights; ``format`` None = the export's first format."""

    def __init__(self, export_dir, format=None):
        self.gallery, self.query, meta = load_exported(export_dir, format)
        self.source = {"exported": os.path.abspath(export_dir), "exported_format": meta["loaded_format"]}
        self.score_thresh = meta["search_score_thresh"]
        super().__init__(meta["test_short_side"], meta["test_long_side"], meta["input_format"])

    @torch.no_grad()
    def detect(self, image):
        inputs, _ = self._inputs(image)
        boxes, scores, embeddings = self.gallery(inputs["image"])
        inst = Instances(tuple(inputs["image"].shape[1:]), pred_boxes=Boxes(boxes), scores=scores, embeddings=embeddings)
        inst = detector_postprocess(inst, inputs["height"], inputs["width"])  # as the model does for its outputs
        return inst.pred_boxes.tensor.float(), inst.scores.float(), inst.embeddings.float()

    @torch.no_grad()
    def embed_query(self, path, box):
        inputs, resized_box = self._query_inputs(path, box)
        return self.query(inputs["image"], resized_box)[0].float()


def list_gallery(gallery):
    """Sorted image and video paths of a gallery folder (directly inside it; other files are counted
    and logged), or ``[gallery]`` for one video file."""
    if os.path.isfile(gallery) and gallery.lower().endswith(VIDEO_EXTENSIONS):
        return [gallery]
    if not os.path.isdir(gallery):
        raise FileNotFoundError(f"search: gallery {gallery!r} is neither a folder nor a video ({', '.join(VIDEO_EXTENSIONS)})")
    names = sorted(os.listdir(gallery))
    sources = [os.path.join(gallery, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
    others = len([n for n in names if os.path.isfile(os.path.join(gallery, n))]) - len(sources)
    if others:
        logger.info("search: %d file(s) neither image nor video in %s ignored", others, gallery)
    if not sources:
        raise ValueError(
            f"search: no images ({', '.join(IMAGE_EXTENSIONS)}) or videos ({', '.join(VIDEO_EXTENSIONS)}) "
            f"in gallery folder {gallery!r}"
        )
    return sources


def is_video(path):
    return path.lower().endswith(VIDEO_EXTENSIONS)


def starts_sample(index, fps, sample_fps):
    """Whether frame ``index`` of a ``fps`` video is the first of its 1/``sample_fps`` s slot
    (``sample_fps`` 0: every frame is taken)."""
    if sample_fps <= 0 or index == 0:
        return True
    return math.floor(index * sample_fps / fps + 1e-9) != math.floor((index - 1) * sample_fps / fps + 1e-9)


def timestamp(seconds):
    """``H:MM:SS.mmm`` of a time in seconds."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def sample_video(path, sample_fps):
    """Yield (frame index, time in s, BGR frame) of the frames of ``path`` taken at ``sample_fps``."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"search: OpenCV cannot open video {path!r}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not fps > 0:
        cap.release()
        raise ValueError(f"search: video {path!r} states no frame rate (got {fps}); frame times are unknown")
    index = 0
    try:
        while cap.grab():
            if starts_sample(index, fps, sample_fps):
                ok, frame = cap.retrieve()
                if not ok:
                    raise ValueError(f"search: video {path!r}: frame {index} cannot be decoded")
                yield index, index / fps, frame
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise ValueError(f"search: video {path!r} has no frames that OpenCV can read")


def read_video_frame(path, index):
    """Frame ``index`` of the video ``path`` (BGR), read in order from the start (exact for every codec)."""
    cap = cv2.VideoCapture(path)
    try:
        for _ in range(index):
            if not cap.grab():
                break
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ValueError(f"search: video {path!r} has no frame {index}")
    return frame


def _gallery_images(gallery, sample_fps):
    """(source path, frame index or None, time or None, image path or BGR frame) of every gallery image."""
    for source in list_gallery(gallery):
        source = os.path.abspath(source)
        if not is_video(source):
            yield source, None, None, source
            continue
        count = 0
        for index, time, frame in sample_video(source, sample_fps):
            count += 1
            yield source, index, time, frame
        logger.info("search: %d frames of %s taken (%s)", count, source,
                    "every frame" if sample_fps <= 0 else f"{sample_fps:g} per second")


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
        tqdm(_gallery_images(gallery, sample_fps), desc="indexing gallery", unit="img")
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


def _add_model_args(p):
    p.add_argument("--config-file", help="the model's config (with --weights)")
    p.add_argument("--weights", help="trained weights (.pth)")
    p.add_argument("--exported", help="instead of both: a folder written by tools/export.py")
    p.add_argument("--exported-format", choices=list(FORMATS),
                   help="with --exported: the programs to run (default: the export's first format; for `query`, "
                        "the index's)")


def _search_model(args, stored=None):
    """The model the command names: --exported, or --config-file + --weights (each defaulting to
    what the index stored, for `query`)."""
    if args.exported:
        if args.config_file or args.weights or args.opts:
            raise SystemExit("search: --exported replaces --config-file, --weights and config overrides")
        return ExportedSearchModel(args.exported, args.exported_format)
    stored = stored or {}
    if not (args.config_file or args.weights or args.opts) and stored.get("exported"):
        return ExportedSearchModel(stored["exported"], args.exported_format or stored.get("exported_format"))
    if args.exported_format:
        raise SystemExit("search: --exported-format goes with --exported")
    config_file, weights = args.config_file or stored.get("config_file"), args.weights or stored.get("weights")
    if not (config_file and weights):
        raise SystemExit("search: give --config-file and --weights, or --exported")
    return SearchModel(config_file, weights, args.opts or stored.get("opts", []))


def _add_gallery_args(p):
    p.add_argument("--gallery", required=True, help="folder of images and/or videos, or one video file")
    p.add_argument("--sample-fps", type=float, default=1.0,
                   help="video frames taken into the gallery per second of video (0 = every frame)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="keep gallery detections with score >= this (default: the config's "
                        "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH)")


def _add_query_args(p):
    p.add_argument("--query-image", required=True)
    p.add_argument("--box", required=True, nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"))
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder for topk.json and topk.png")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_search = sub.add_parser("search", help="index a gallery folder in memory and answer one query")
    _add_model_args(p_search)
    _add_gallery_args(p_search)
    _add_query_args(p_search)
    p_index = sub.add_parser("index", help="detect and embed every person of a gallery folder, save to disk")
    _add_model_args(p_index)
    _add_gallery_args(p_index)
    p_index.add_argument("--out", required=True, help="index file to write (e.g. index.pt)")
    p_query = sub.add_parser("query", help="answer a query against a saved index")
    p_query.add_argument("--index", required=True)
    _add_model_args(p_query)
    _add_query_args(p_query)
    for p in (p_search, p_index, p_query):
        p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()

    if args.command == "query":
        index = load_index(args.index)
        model = _search_model(args, index)
        result = answer_query(model, index, args.query_image, args.box, args.topk, args.out, args.index)
    else:
        model = _search_model(args)
        index = build_index(model, args.gallery, args.score_thresh, args.sample_fps)
        if args.command == "index":
            save_index(index, args.out)
            print(f"indexed {index['embeddings'].shape[0]} people in {len(index['images'])} images -> {args.out}")
            return index
        result = answer_query(model, index, args.query_image, args.box, args.topk, args.out)
    for hit in result["topk"]:
        where = f"frame {hit['frame']} at {hit['timestamp']}" if "frame" in hit else ""
        print(f"{hit['rank']:>3}  {hit['similarity']:.4f}  {hit['image']}  {where}  {hit['box']}")
    print(f"wrote {os.path.join(args.out, 'topk.json')}")
    return result


if __name__ == "__main__":
    main()
