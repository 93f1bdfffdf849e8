"""Deployable inference models of a trained person-search model, traced with TorchScript.

Two programs that need neither this project nor detectron2 to run (``torch.jit.load`` only):

* gallery indexing: ``gallery(image) -> (boxes [N, 4], scores [N], embeddings [N, D])``;
* query embedding: ``query(image, box [1, 4]) -> embedding [1, D]`` (exactly one box: the traced count).

``image`` is a uint8 ``[3, H, W]`` tensor in the model's ``INPUT.FORMAT`` channel order, already
resized to the test size (the resize is the caller's: ``export.json`` holds its bounds); boxes are
x1, y1, x2, y2 in that image's pixels. Embeddings are L2-normalised. The model's own ops run as
traced: its resolution-dependent parts (padding, anchors, ROIAlign) follow the input size, its
test thresholds and top-k are the config's at export time.
"""
import json
import logging
import os
import warnings

import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from .checkpoint import AtomicCheckpointer, atomic_write
from .config import add_galw_config

__all__ = [
    "EXPORT_FORMAT", "GalleryIndexer", "QueryEmbedder", "build_inference_model", "export_torchscript", "load_exported",
]

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "galw-export/1"
GALLERY_FILE, QUERY_FILE, META_FILE = "gallery.ts", "query.ts", "export.json"


def build_inference_model(config_file, weights, opts=()):
    """(frozen cfg, eval-mode model with ``weights``) from a config file and a weights file alone:
    no dataset is read (the OIM table size comes from the checkpoint), and MODEL.WEIGHTS is set so
    an absent ImageNet init file is skipped. CPU when CUDA is absent."""
    for what, path in (("config file", config_file), ("weights file", weights)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path!r} not found")
    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = os.path.abspath(weights)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = build_model(cfg)
    AtomicCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


class GalleryIndexer(nn.Module):
    """image -> boxes (input pixels), scores, embeddings of every detected person."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        inst = self.model([{"image": image}])[0]["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.embeddings


class QueryEmbedder(nn.Module):
    """image + one box [1, 4] -> the embedder branch's embedding of it [1, D]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, boxes: torch.Tensor):
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        return model.branches[model.embedder].embed(images, features, [Boxes(boxes)])[0]


def _trace(module, inputs):
    """torch.jit.trace without its own re-run check (export_torchscript compares outputs itself).
    Its TracerWarnings (Python values fixed at trace time) are the limits docs/export.md lists."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module.eval(), inputs, check_trace=False)


@torch.no_grad()
def export_torchscript(model, cfg, out_dir, image, query_boxes, meta=None):
    """Trace ``model`` (a built ``PersonSearch`` with its weights, eval mode) on ``image`` (uint8
    [3, H, W], test size) and ``query_boxes`` [1, 4]; write gallery.ts, query.ts and export.json to
    ``out_dir``. Returns the metadata, with the largest |traced - eager| of each output on ``image``."""
    model.eval()
    query_boxes = query_boxes.to(torch.float32)
    gallery_eager, query_eager = GalleryIndexer(model), QueryEmbedder(model)
    gallery, query = _trace(gallery_eager, (image,)), _trace(query_eager, (image, query_boxes))
    diffs = {}
    for name, eager, traced in (
        ("gallery", gallery_eager(image), gallery(image)),
        ("query", (query_eager(image, query_boxes),), (query(image, query_boxes),)),
    ):
        for field, a, b in zip(("boxes", "scores", "embeddings") if name == "gallery" else ("embeddings",), eager, traced):
            if a.shape != b.shape:
                raise RuntimeError(f"export: traced {name} {field} has shape {tuple(b.shape)}, eager {tuple(a.shape)}")
            diffs[f"{name}/{field}"] = float((a - b).abs().max()) if a.numel() else 0.0
    os.makedirs(out_dir, exist_ok=True)
    for module, name in ((gallery, GALLERY_FILE), (query, QUERY_FILE)):
        atomic_write(os.path.join(out_dir, name), lambda f, m=module: torch.jit.save(m, f))
    meta = dict(meta or {})
    meta.update(
        format=EXPORT_FORMAT,
        input_format=cfg.INPUT.FORMAT,
        test_short_side=int(cfg.INPUT.PS.TEST_SHORT_SIDE),
        test_long_side=int(cfg.INPUT.PS.TEST_LONG_SIDE),
        search_score_thresh=float(cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH),
        embedding_dim=int(gallery_eager(image)[2].shape[1]),
        traced_on_size=list(image.shape[1:]),
        torch_version=torch.__version__,
        max_abs_diff_on_trace_image=diffs,
    )
    atomic_write(os.path.join(out_dir, META_FILE), lambda f: f.write(json.dumps(meta, indent=2).encode()))
    logger.info("export: %s written; |traced - eager| on the trace image: %s", out_dir, diffs)
    return meta


def load_exported(out_dir, map_location="cpu"):
    """(gallery, query, metadata) of an export folder; the programs are TorchScript, not pickles."""
    meta_path = os.path.join(out_dir, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{out_dir}: not an exported model (no {META_FILE}; write one with tools/export.py)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    gallery = torch.jit.load(os.path.join(out_dir, GALLERY_FILE), map_location=map_location)
    query = torch.jit.load(os.path.join(out_dir, QUERY_FILE), map_location=map_location)
    return gallery, query, meta
