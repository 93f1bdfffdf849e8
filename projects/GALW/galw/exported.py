"""Running the programs of ``galw.export``: loading them, and checking their inputs first.

An exported program only knows tensor shapes: a float image, a channel-last array or a box outside
the image would reach its ops as they are (a shape-guard failure deep in the runtime, or silently
wrong outputs). ``CheckedGallery`` and ``CheckedQuery`` stand in front of a loaded program and
turn such input into a ``TypeError``/``ValueError`` naming what was expected, or into the clamp
that docs/export.md documents (boxes are clipped to the image). ``load_exported`` returns them.
"""
import io
import json
import os

import torch

__all__ = [
    "EXPORT_FORMAT", "FORMATS", "MAX_SIDE", "META_FILE", "MIN_SIDE", "CheckedGallery", "CheckedQuery",
    "ExportedProgramRunner", "OnnxProgram", "check_boxes", "check_image", "load_exported", "load_program",
]

EXPORT_FORMAT = "galw-export/2"
META_FILE = "export.json"
#: The program files of each format: (gallery indexing, query embedding).
FORMATS = {"torch_export": ("gallery.pt2", "query.pt2"), "onnx": ("gallery.onnx", "query.onnx")}
#: The image sides the programs are exported for (their dynamic height and width range): the
#: backbone's coarsest map (stride 32, after padding) has at least 2 x 2 locations from MIN_SIDE on.
MIN_SIDE, MAX_SIDE = 64, 8192
ONNX_PACKAGES = "onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"ONNX export and inference need onnxruntime: pip install {ONNX_PACKAGES}") from None
    return onnxruntime


class OnnxProgram:
    """An ONNX program run by onnxruntime (CPU), called as the ExportedProgram one: torch tensors
    in, a tensor (one output) or a tuple of tensors out. Uses as many threads as torch."""

    def __init__(self, model):
        """``model``: an ``.onnx`` path or its bytes."""
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs):
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs)}
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs


class ExportedProgramRunner:
    """A ``torch.export`` program (``.pt2``) loaded with ``torch.export.load`` and called as a module.
    torchvision is imported first: the programs hold its ``nms`` and ``roi_align`` ops."""

    def __init__(self, source):
        import torchvision  # noqa: F401  (registers torchvision::nms, torchvision::roi_align)

        self.program = torch.export.load(io.BytesIO(source) if isinstance(source, bytes) else source)
        self.module = self.program.module()

    def __call__(self, *inputs):
        with torch.no_grad():
            out = self.module(*inputs)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return out[0] if len(out) == 1 else out


def load_program(fmt, source):
    """A program of ``fmt`` (a key of FORMATS) from a path or from its bytes."""
    return OnnxProgram(source) if fmt == "onnx" else ExportedProgramRunner(source)


def check_image(image, min_side=MIN_SIDE, max_side=MAX_SIDE):
    """``image`` as the programs take it (uint8 [3, H, W] tensor, CPU), or a clear error."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor uint8 [3, H, W]; got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8 [3, H, W] with values 0..255 (as read from a file); got {image.dtype}: "
                        "a float image is not rescaled here, convert it with (x * 255).round().to(torch.uint8) "
                        "if it holds 0..1")
    if image.dim() != 3 or image.shape[0] != 3:
        hint = ": channels last, use image.permute(2, 0, 1)" if image.dim() == 3 and image.shape[-1] == 3 else ""
        raise ValueError(f"image must be [3, H, W] (3 channels first); got shape {list(image.shape)}{hint}")
    height, width = image.shape[1:]
    if height == 0 or width == 0:
        raise ValueError(f"image is empty: shape {list(image.shape)}")
    if not (min_side <= height <= max_side and min_side <= width <= max_side):
        raise ValueError(f"image is {height}x{width}; the exported programs take sides of {min_side} to {max_side} "
                         "pixels (resize it to the test size, export.json's test_short_side/test_long_side)")
    return image.cpu().contiguous()


def check_boxes(boxes, height, width):
    """``boxes`` (x1, y1, x2, y2 [K, 4] or [4]) clipped to the ``height`` x ``width`` image, float32,
    or a clear error for a box that is not finite, not ordered, or has no area inside the image."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).cpu()
    if boxes.dim() == 1:
        boxes = boxes[None]
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [K, 4] (x1, y1, x2, y2); got shape {list(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"boxes must be finite; got {boxes.tolist()}")
    clipped = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                           boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
    bad = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if bad.any():
        box = boxes[bad][0].tolist()
        raise ValueError(f"box {box} has no area inside the {width}x{height} image (x1 < x2, y1 < y2 within it)")
    return clipped.contiguous()


class CheckedGallery:
    """gallery(image) -> (boxes [N, 4], scores [N], embeddings [N, D]) with the input checked."""

    def __init__(self, program):
        self.program = program

    def __call__(self, image):
        boxes, scores, embeddings = self.program(check_image(image))
        return boxes, scores, embeddings


class CheckedQuery:
    """query(image, boxes) -> embeddings [K, D] with the inputs checked and the boxes clipped to the
    image; no box gives [0, D] without running the program."""

    def __init__(self, program, embedding_dim):
        self.program = program
        self.embedding_dim = int(embedding_dim)

    def __call__(self, image, boxes):
        image = check_image(image)
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.numel() == 0:
            return torch.zeros((0, self.embedding_dim))
        return self.program(image, check_boxes(boxes, *image.shape[1:]))


def load_exported(out_dir, format=None):
    """(gallery, query, metadata) of an export folder in ``format`` (default: its first format),
    the programs behind the input checks (``CheckedGallery``, ``CheckedQuery``)."""
    meta_path = os.path.join(out_dir, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{out_dir}: not an exported model (no {META_FILE}; write one with tools/export.py)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r} "
                         "(re-export the model with tools/export.py)")
    available = meta["formats"]
    format = format or available[0]
    if format not in available:
        raise ValueError(f"{out_dir}: holds the formats {available}, not {format!r} (export it with tools/export.py --format)")
    gallery, query = (load_program(format, os.path.join(out_dir, name)) for name in FORMATS[format])
    return CheckedGallery(gallery), CheckedQuery(query, meta["embedding_dim"]), dict(meta, loaded_format=format)
