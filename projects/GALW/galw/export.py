"""Deployable inference programs of a trained person-search model: ``torch.export`` and ONNX.

Two programs that need neither this project nor detectron2 to run (``torch.export.load`` with
torchvision imported, or onnxruntime for the ONNX files):

* gallery indexing: ``gallery(image) -> (boxes [N, 4], scores [N], embeddings [N, D])``;
* query embedding: ``query(image, boxes [K, 4]) -> embeddings [K, D]`` (the search tool passes one box).

``image`` is a uint8 ``[3, H, W]`` tensor in the model's ``INPUT.FORMAT`` channel order, already
resized to the test size (the resize is the caller's: ``export.json`` holds its bounds); boxes are
x1, y1, x2, y2 in that image's pixels. Image height and width (``MIN_SIDE`` to ``MAX_SIDE``), the
number of detections and the number of query boxes are dynamic; the test thresholds and top-k are
the config's at export time. Both formats come from one ``torch.export.export`` of the same eager
modules (ONNX by ``torch.onnx.export(..., dynamo=True)``); ``galw.exported`` loads and runs them
behind input checks.
"""
import io
import json
import logging
import os

import torch
import torchvision  # noqa: F401  (torchvision::nms is registered before its shape is replaced below)
from torch import nn
from torch.export import Dim

from detectron2.modeling import build_model
from detectron2.structures import Boxes

from galw_core.files import atomic_write

from .checkpoint import AtomicCheckpointer
from .config_file import load_config
from .exported import (
    EXPORT_FORMAT, FORMATS, MAX_SIDE, META_FILE, MIN_SIDE, OnnxProgram, import_onnxruntime, load_exported, load_program,
)
from .modeling.deform_conv import DeformConv2d, resolve_impl
from .modeling.exportable import boxes_of, instances_of
from .modeling.meta_arch import _concat

__all__ = [
    "DEFAULT_FORMATS", "EXPORT_FORMAT", "FORMATS", "GalleryIndexer", "OnnxProgram", "QueryEmbedder",
    "build_inference_model", "export_model", "load_exported", "tracing_inference",
]

logger = logging.getLogger(__name__)

DEFAULT_FORMATS = ("torch_export", "onnx")
#: The ONNX opset of torch 2.14's dynamo exporter (GridSample and RoiAlign's half_pixel mode need >= 16).
ONNX_OPSET = 18
#: Most query boxes per call of an exported query program.
MAX_BOXES = 4096
_INPUTS = {"gallery": ("image",), "query": ("image", "boxes")}
_OUTPUTS = {"gallery": ("boxes", "scores", "embeddings"), "query": ("embeddings",)}


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
    """image -> boxes (input pixels), scores, embeddings of every detected person: the model's
    inference for one image without a resize (``PersonSearch._inference`` and detectron2's
    ``detector_postprocess`` at scale 1), in ops whose output sizes ``torch.export`` keeps symbolic.
    The attribute branch's probabilities are not computed."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return _gallery(self.model, image)


def _gallery(model, image):
    """(boxes, scores, embeddings) of one image at its own scale: :class:`GalleryIndexer`'s forward."""
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    detector, embedder = model.branches[model.detector], model.branches[model.embedder]
    inst = detector.detect(images, features)[0]
    boxes, embeddings = inst.pred_boxes, inst.embeddings
    if embedder is not detector and model.embedding != "detector":
        embedded = embedder.embed(images, features, [boxes])[0]
        embeddings = _concat(embeddings, embedded) if model.embedding == "concat" else embedded
    # detector_postprocess at scale 1 keeps the non-empty boxes; one index for every field keeps
    # one symbolic detection count (an Instances mask per field would give each its own).
    keep = torch.nonzero(boxes.nonempty()).squeeze(1)
    return boxes.tensor[keep], inst.scores[keep], embeddings[keep]


def tracing_inference(model, inputs):
    """``inference_func`` of ``detectron2.export.TracingAdapter`` for a ``PersonSearch`` model: one
    input ``{"image": [3, H, W]}`` -> ``[{"instances": Instances(pred_boxes, scores, embeddings)}]`` in
    that image's pixels, the model's inference without the final resize, as detectron2's
    tools/deploy/export_model.py (``export_tracing``) runs ``GeneralizedRCNN.inference(...,
    do_postprocess=False)``. The model's own forward ends in ``detector_postprocess``, whose
    ``Instances`` rebuild fixes the symbolic detection count (structures/instances.py, ``set``), so
    ``torch.export`` of the adapter around the plain model stops there."""
    if len(inputs) != 1 or set(inputs[0]) - {"height", "width", "file_name", "image_id"} != {"image"}:
        raise ValueError("tracing_inference: one input {'image': uint8 or float [3, H, W]} is traced; "
                         f"got {len(inputs)} input(s) with keys {[sorted(x) for x in inputs]}")
    image = inputs[0]["image"]
    boxes, scores, embeddings = _gallery(model, image)
    fields = {"pred_boxes": boxes_of(boxes), "scores": scores, "embeddings": embeddings}
    return [{"instances": instances_of((image.shape[-2], image.shape[-1]), **fields)}]


class QueryEmbedder(nn.Module):
    """image + boxes [K, 4] -> the search embeddings of the boxes [K, D] (TEST.PERSON_SEARCH.EMBEDDING)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, boxes: torch.Tensor):
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        return model._embed_boxes(images, features, [Boxes(boxes)])[0]


class _GridSampleDeformConvs:
    """Every deformable conv on its pure-PyTorch grid_sample form (the same function) while exporting
    to ONNX: torchvision's ``deform_conv2d`` has no ONNX translation (onnxscript's torchlib)."""

    def __init__(self, model):
        self.convs = [(m, m.impl) for m in model.modules() if isinstance(m, DeformConv2d)]
        self.device = model.device

    def changes_any(self):
        """Whether a conv runs another implementation on the model's device (a program exported
        without this context then holds torchvision's op)."""
        return any(resolve_impl(impl, self.device) != "grid_sample" for _, impl in self.convs)

    def __enter__(self):
        for m, _ in self.convs:
            m.impl = "grid_sample"

    def __exit__(self, *exc):
        for m, impl in self.convs:
            m.impl = impl


@torch.library.register_fake("torchvision::nms", allow_override=True)
def _nms_shape(dets, scores, iou_threshold):
    """torchvision::nms's output shape for ``torch.export``, a kept count from 0: torchvision 0.29.1's
    (torchvision/_meta_registrations.py:173) makes it with the deprecated ``create_unbacked_symint``,
    whose minimum is 2, so an exported program asserted two kept boxes and failed on an image with
    fewer (and torch warned of the deprecation). It replaces torchvision's registration:
    ``allow_override`` (torch >= 2.8, setup.cfg) is passed because torch refused a second
    registration by default until pytorch/pytorch#182293 (torch 2.11 does)."""
    torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: f"nms: boxes must be [N, 4], got {list(dets.shape)}")
    torch._check(scores.dim() == 1 and scores.size(0) == dets.size(0), lambda: "nms: one score per box")
    return dets.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)


def _dynamic_shapes(name):
    image = {1: Dim("height", min=MIN_SIDE, max=MAX_SIDE), 2: Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
    if name == "gallery":
        return {"image": image}
    return {"image": image, "boxes": {0: Dim("boxes", min=1, max=MAX_BOXES)}}


def _export(module, inputs, name):
    """``torch.export.export`` of a program. Shape relations that the exporter cannot prove over the
    whole size range (true ones, e.g. reshapes of the padded maps) become runtime asserts rather
    than errors; a data-dependent branch left in the model is an error naming the program."""
    try:
        return torch.export.export(module.eval(), inputs, dynamic_shapes=_dynamic_shapes(name), strict=False,
                                   prefer_deferred_runtime_asserts_over_guards=True)
    except Exception as e:  # torch.export raises several types; the first line names the code
        lines = str(e).strip().splitlines() or [type(e).__name__]
        reason = lines[0] + "".join(f" {line.strip()}" for line in lines if line.startswith("Caused by:"))
        raise RuntimeError(f"export: the {name} program (detector {module.model.detector}) cannot be exported with torch.export: "
                           f"{reason} (projects/GALW/docs/export.md lists what exports)") from e


def _pt2_bytes(program):
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _onnx_bytes(program, name):
    """ONNX protobuf of an ExportedProgram (its dynamic dimensions kept, named as in ``_dynamic_shapes``)."""
    onnx_program = torch.onnx.export(
        program, dynamo=True, opset_version=ONNX_OPSET, input_names=list(_INPUTS[name]),
        output_names=list(_OUTPUTS[name]), verbose=False, optimize=True,
    )
    return onnx_program.model_proto.SerializeToString()


@torch.no_grad()
def export_model(model, cfg, out_dir, image, query_boxes, formats=DEFAULT_FORMATS, meta=None):
    """Export ``model`` (a built ``PersonSearch`` with its weights, eval mode) with ``image`` (uint8
    [3, H, W], test size) and ``query_boxes`` [K, 4] as example inputs into each of ``formats``
    (keys of ``FORMATS``); write their gallery and query programs and export.json to ``out_dir``.
    Each program is loaded back from its bytes and run on the example before anything is written;
    the metadata holds the largest |exported - eager| of each output (``"<format>/<program>/<output>"``)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"export: formats must be among {list(FORMATS)}; got {list(formats)}")
    model.eval()
    query_boxes = query_boxes.to(torch.float32).reshape(-1, 4)
    # torch.export specialises a dimension whose example size is 1: two boxes keep K symbolic.
    example_boxes = query_boxes if len(query_boxes) > 1 else query_boxes.expand(2, 4).contiguous()
    modules = {"gallery": GalleryIndexer(model), "query": QueryEmbedder(model)}
    inputs = {"gallery": (image,), "query": (image, example_boxes)}
    eager = {"gallery": modules["gallery"](image), "query": (modules["query"](image, example_boxes),)}
    programs, diffs, meta = {}, {}, dict(meta or {})
    exported = {}
    for fmt in formats:
        for name, file_name in zip(("gallery", "query"), FORMATS[fmt]):
            if fmt == "onnx":
                convs = _GridSampleDeformConvs(model)
                if convs.changes_any() or name not in exported:
                    with convs:
                        exported[name] = _export(modules[name], inputs[name], name)
                data = _onnx_bytes(exported[name], name)
                got = load_program(fmt, data)(*(t.cpu() for t in inputs[name]))
            else:
                exported[name] = _export(modules[name], inputs[name], name)
                data = _pt2_bytes(exported[name])
                got = load_program(fmt, data)(*inputs[name])
            got = got if isinstance(got, tuple) else (got,)
            for field, a, b in zip(_OUTPUTS[name], eager[name], got):
                b = b.to(a.device)
                if a.shape != b.shape:
                    raise RuntimeError(f"export: {fmt} {name} {field} has shape {tuple(b.shape)}, eager {tuple(a.shape)}")
                diffs[f"{fmt}/{name}/{field}"] = float((a - b).abs().max()) if a.numel() else 0.0
            programs[file_name] = data
    if "onnx" in formats:
        import onnx

        meta.update(onnx_opset=ONNX_OPSET, onnx_version=onnx.__version__,
                    onnxruntime_version=import_onnxruntime().__version__)
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
        image_side_range=[MIN_SIDE, MAX_SIDE],
        max_query_boxes=MAX_BOXES,
        search_score_thresh=float(cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH),
        embedding_dim=int(eager["gallery"][2].shape[1]),
        example_image_size=list(image.shape[1:]),
        torch_version=torch.__version__,
        max_abs_diff_on_example=diffs,
    )
    atomic_write(os.path.join(out_dir, META_FILE), lambda f: f.write(json.dumps(meta, indent=2).encode()))
    logger.info("export: %s written (%s); |exported - eager| on the example: %s", out_dir, ", ".join(formats), diffs)
    return meta
