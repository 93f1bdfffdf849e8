"""Deployable inference models of a trained person-search model: TorchScript and ONNX programs.

Two programs that need neither this project nor detectron2 to run (``torch.jit.load``, or
onnxruntime for the ONNX files):

* gallery indexing: ``gallery(image) -> (boxes [N, 4], scores [N], embeddings [N, D])``;
* query embedding: ``query(image, boxes [K, 4]) -> embeddings [K, D]`` (the search tool passes one box).

``image`` is a uint8 ``[3, H, W]`` tensor in the model's ``INPUT.FORMAT`` channel order, already
resized to the test size (the resize is the caller's: ``export.json`` holds its bounds); boxes are
x1, y1, x2, y2 in that image's pixels. Embeddings are L2-normalised. The model's own ops run as
traced: its resolution-dependent parts (padding, anchors, ROIAlign) follow the input size, its
test thresholds and top-k are the config's at export time. Both formats are traced from the same
eager modules (the ONNX files with PyTorch's TorchScript-based ONNX exporter).
"""
import contextlib
import io
import json
import logging
import os
import warnings

import torch
from torch import nn

from detectron2.modeling import build_model
from detectron2.structures import Boxes

from galw_core.files import atomic_write

from .checkpoint import AtomicCheckpointer
from .config_file import load_config
from .modeling.deform_conv import DeformConv2d

__all__ = [
    "EXPORT_FORMAT", "FORMATS", "GalleryIndexer", "OnnxProgram", "QueryEmbedder", "build_inference_model", "export_model",
    "load_exported",
]

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "galw-export/1"
META_FILE = "export.json"
#: The program files of each format: (gallery indexing, query embedding).
FORMATS = {"torchscript": ("gallery.ts", "query.ts"), "onnx": ("gallery.onnx", "query.onnx")}
#: GridSample (the deformable conv's exported form) and ROIAlign's aligned mode need opset >= 16.
ONNX_OPSET = 17
ONNX_PACKAGES = "onnx==1.23.2 onnxruntime==1.32.0"
_OUTPUTS = {"gallery": ("boxes", "scores", "embeddings"), "query": ("embedding",)}


def build_inference_model(config_file, weights, opts=()):
    """(frozen cfg, eval-mode model with ``weights``) from a config file and a weights file alone:
    no dataset is read (the OIM table size comes from the checkpoint), and MODEL.WEIGHTS is set so
    an absent ImageNet init file is skipped. CPU when CUDA is absent."""
    for what, path in (("config file", config_file), ("weights file", weights)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path!r} not found")
    cfg = load_config(config_file, opts)
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
    """image + boxes [K, 4] -> the embedder branch's embeddings of them [K, D]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, boxes: torch.Tensor):
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        return model.branches[model.embedder].embed(images, features, [Boxes(boxes)])[0]


def _trace(module, inputs):
    """torch.jit.trace without its own re-run check (export_model compares outputs itself).
    Its TracerWarnings (Python values fixed at trace time) are the limits docs/export.md lists."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module.eval(), inputs, check_trace=False)


def _torchscript_bytes(module, inputs):
    buffer = io.BytesIO()
    torch.jit.save(_trace(module, inputs), buffer)
    return buffer.getvalue()


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"ONNX export and inference need onnxruntime: pip install {ONNX_PACKAGES}") from None
    return onnxruntime


@contextlib.contextmanager
def _grid_sample_deform_convs(model):
    """Every deformable conv on its pure-PyTorch grid_sample form (the same function) while exporting
    to ONNX: torchvision's ``deform_conv2d`` has no symbolic in the TorchScript-based exporter."""
    convs = [(m, m.impl) for m in model.modules() if isinstance(m, DeformConv2d)]
    try:
        for m, _ in convs:
            m.impl = "grid_sample"
        yield
    finally:
        for m, impl in convs:
            m.impl = impl


def _onnx_bytes(module, inputs, name):
    """ONNX protobuf of ``module`` traced on ``inputs``: image height and width, and the number of
    gallery detections, are dynamic axes."""
    input_names = ["image", "box"][: len(inputs)]
    dynamic_axes = {"image": {1: "height", 2: "width"}}
    if name == "gallery":
        dynamic_axes.update({out: {0: "detections"} for out in _OUTPUTS[name]})
    else:
        dynamic_axes.update(box={0: "boxes"}, embedding={0: "boxes"})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings (see _trace) and the exporter's deprecation notice
        torch.onnx.export(
            module.eval(), inputs, buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=input_names,
            output_names=list(_OUTPUTS[name]), dynamic_axes=dynamic_axes,
        )
    return buffer.getvalue()


class OnnxProgram:
    """An ONNX program run by onnxruntime (CPU), called as the TorchScript one: torch tensors in, a
    tensor (one output) or a tuple of tensors out. Uses as many threads as torch."""

    def __init__(self, model):
        """``model``: an ``.onnx`` path or its bytes."""
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs):
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs)}
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs


def _load_program(fmt, source, map_location="cpu"):
    """A program of ``fmt`` from a path or from its bytes."""
    if fmt == "onnx":
        return OnnxProgram(source)
    return torch.jit.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location=map_location)


@torch.no_grad()
def export_model(model, cfg, out_dir, image, query_boxes, formats=("torchscript",), meta=None):
    """Trace ``model`` (a built ``PersonSearch`` with its weights, eval mode) on ``image`` (uint8
    [3, H, W], test size) and ``query_boxes`` [1, 4] into each of ``formats`` (keys of ``FORMATS``);
    write their gallery and query programs and export.json to ``out_dir``. Each program is loaded
    back from its bytes and run on ``image`` before anything is written; the metadata holds the
    largest |exported - eager| of each output (``"<format>/<program>/<output>"``)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"export: formats must be among {list(FORMATS)}; got {list(formats)}")
    model.eval()
    query_boxes = query_boxes.to(torch.float32)
    modules = {"gallery": GalleryIndexer(model), "query": QueryEmbedder(model)}
    inputs = {"gallery": (image,), "query": (image, query_boxes)}
    eager = {"gallery": modules["gallery"](image), "query": (modules["query"](image, query_boxes),)}
    programs, diffs, meta = {}, {}, dict(meta or {})
    for fmt in formats:
        for name, file_name in zip(("gallery", "query"), FORMATS[fmt]):
            if fmt == "onnx":
                with _grid_sample_deform_convs(model):
                    data = _onnx_bytes(modules[name], inputs[name], name)
                got = _load_program(fmt, data)(*(t.cpu() for t in inputs[name]))
            else:
                data = _torchscript_bytes(modules[name], inputs[name])
                got = _load_program(fmt, data)(*inputs[name])
            got = got if isinstance(got, tuple) else (got,)
            for field, a, b in zip(_OUTPUTS[name], eager[name], got):
                b = b.to(a.device)
                if a.shape != b.shape:
                    raise RuntimeError(f"export: {fmt} {name} {field} has shape {tuple(b.shape)}, eager {tuple(a.shape)}")
                diffs[f"{fmt}/{name}/{field}"] = float((a - b).abs().max()) if a.numel() else 0.0
            programs[file_name] = data
    if "onnx" in formats:
        import onnx

        ort = _import_onnxruntime()
        meta.update(onnx_opset=ONNX_OPSET, onnx_version=onnx.__version__, onnxruntime_version=ort.__version__)
    os.makedirs(out_dir, exist_ok=True)
    for file_name, data in programs.items():
        atomic_write(os.path.join(out_dir, file_name), lambda f, d=data: f.write(d))
    meta.update(
        format=EXPORT_FORMAT,
        formats=list(formats),
        programs={fmt: dict(zip(("gallery", "query"), FORMATS[fmt])) for fmt in formats},
        input_format=cfg.INPUT.FORMAT,
        test_short_side=int(cfg.INPUT.PS.TEST_SHORT_SIDE),
        test_long_side=int(cfg.INPUT.PS.TEST_LONG_SIDE),
        search_score_thresh=float(cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH),
        embedding_dim=int(eager["gallery"][2].shape[1]),
        traced_on_size=list(image.shape[1:]),
        torch_version=torch.__version__,
        max_abs_diff_on_trace_image=diffs,
    )
    atomic_write(os.path.join(out_dir, META_FILE), lambda f: f.write(json.dumps(meta, indent=2).encode()))
    logger.info("export: %s written (%s); |exported - eager| on the trace image: %s", out_dir, ", ".join(formats), diffs)
    return meta


def load_exported(out_dir, format=None, map_location="cpu"):
    """(gallery, query, metadata) of an export folder in ``format`` (default: its first format,
    TorchScript when it holds both); the programs are TorchScript or ONNX, not pickles."""
    meta_path = os.path.join(out_dir, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{out_dir}: not an exported model (no {META_FILE}; write one with tools/export.py)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    available = meta.get("formats", ["torchscript"])
    format = format or available[0]
    if format not in available:
        raise ValueError(f"{out_dir}: holds the formats {available}, not {format!r} (export it with tools/export.py --format)")
    gallery, query = (_load_program(format, os.path.join(out_dir, name), map_location) for name in FORMATS[format])
    return gallery, query, dict(meta, loaded_format=format)
