"""The models that embed gallery and query images for search: a config + weights, or the exported
programs of ``galw.export``, both at the test-time size the model was evaluated at."""
import os

import numpy as np
import torch
from PIL import Image
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..export import build_inference_model, load_exported


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
    """The programs of tools/export.py (torch.export, or ONNX run by onnxruntime) in place of the
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


def model_source(config_file=None, weights=None, opts=(), exported=None, exported_format=None, stored=None):
    """The ``source`` of the model a command names: ``exported`` (+ format), or ``config_file`` +
    ``weights`` (+ opts), each defaulting to what an index stored (``stored``, its fields). Raises
    ValueError naming the arguments that do not go together."""
    opts = list(opts or [])
    if exported:
        if config_file or weights or opts:
            raise ValueError("search: --exported replaces --config-file, --weights and config overrides")
        return {"exported": exported, "exported_format": exported_format}
    stored = stored or {}
    if not (config_file or weights or opts) and stored.get("exported"):
        return {"exported": stored["exported"], "exported_format": exported_format or stored.get("exported_format")}
    if exported_format:
        raise ValueError("search: --exported-format goes with --exported")
    config_file, weights = config_file or stored.get("config_file"), weights or stored.get("weights")
    if not (config_file and weights):
        raise ValueError("search: give --config-file and --weights, or --exported")
    return {"config_file": config_file, "weights": weights, "opts": opts or list(stored.get("opts", []))}


def load_search_model(source):
    """The model of a ``source`` (``model_source``, or an index's fields): the one place search
    loads a model, and so the one place an index's stored config file is read."""
    if source.get("exported"):
        return ExportedSearchModel(source["exported"], source.get("exported_format"))
    return SearchModel(source["config_file"], source["weights"], source.get("opts", ()))
