"""``PersonSearchDatasetMapper``: person-search records -> model inputs (image + Instances with pids)."""
import copy
import logging

import numpy as np
import torch
from PIL import Image
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

logger = logging.getLogger(__name__)

__all__ = ["PersonSearchDatasetMapper", "LongShortResize", "RandomLongShortResize", "ChoiceLongShortResize",
           "TRAIN_SCALE_MODES"]

TRAIN_SCALE_MODES = ("value", "range")


def _scaled_size(h, w, long_side, short_side):
    """Keep-ratio size whose long side <= long_side and short side <= short_side (one bound is met),
    rounded as the references' mmcv ``rescale_size`` (int(x + 0.5))."""
    scale = min(long_side / max(h, w), short_side / min(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def _test_size(h, w, long_side, short_side):
    """:func:`_scaled_size`'s fit computed as detectron2's ``ResizeShortestEdge.get_output_shape``
    (data/transforms/augmentation_impl.py), so that a size on a half-pixel tie (e.g. 87x174 into 213x160:
    106.5 rows) rounds as in ``DefaultPredictor``, tools/search.py and the export, which resize with it."""
    nh, nw = T.ResizeShortestEdge.get_output_shape(h, w, short_side, long_side)
    return max(1, nh), max(1, nw)


class LongShortResize(T.Augmentation):
    """Resize keeping the aspect ratio to fit a (long, short) side bound, e.g. 1500x900 at test time."""

    def __init__(self, long_side, short_side, interp=Image.BILINEAR):
        super().__init__()
        self.long_side, self.short_side, self.interp = long_side, short_side, interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        nh, nw = _test_size(h, w, self.long_side, self.short_side)
        return T.ResizeTransform(h, w, nh, nw, self.interp)


class RandomLongShortResize(T.Augmentation):
    """Multi-scale training, "range" mode: long side and short side bounds drawn independently and
    uniformly in ranges (the paper's "long sides randomly resized from 667 to 2000" read as ranges)."""

    def __init__(self, long_range, short_range, interp=Image.BILINEAR):
        super().__init__()
        self.long_range, self.short_range, self.interp = tuple(long_range), tuple(short_range), interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        long_side = np.random.uniform(*self.long_range)
        short_side = np.random.uniform(*self.short_range)
        nh, nw = _scaled_size(h, w, long_side, short_side)
        return T.ResizeTransform(h, w, nh, nw, self.interp)


class ChoiceLongShortResize(T.Augmentation):
    """Multi-scale training as the references: one (long, short) bound pair drawn uniformly from a list."""

    def __init__(self, scales, interp=Image.BILINEAR):
        super().__init__()
        scales = [tuple(x) for x in scales]
        if not scales or any(len(x) != 2 or min(x) <= 0 for x in scales):
            raise ValueError(f"INPUT.PS.TRAIN_SCALES must be a non-empty list of (long, short) > 0 pairs, got {scales}")
        self.scales, self.interp = scales, interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        long_side, short_side = self.scales[np.random.randint(len(self.scales))]
        nh, nw = _scaled_size(h, w, long_side, short_side)
        return T.ResizeTransform(h, w, nh, nw, self.interp)


class PersonSearchDatasetMapper:
    """Reads the image, applies the resize/flip and builds ``instances`` (train) or ``query_instances``.

    Training dicts get ``gt_boxes``, ``gt_classes`` (zeros), ``gt_pids`` (-1 unlabeled) and, when the
    dataset has attributes, ``gt_attributes`` [N, A] (-1 unknown). Test dicts keep the original
    ``height``/``width`` so predictions are rescaled to the original image; query dicts also carry
    ``query_instances`` with the query box transformed like the image. With ``oracle_boxes`` (the
    evaluation's GT-box oracle) test gallery dicts also carry ``oracle_instances``: their GT boxes,
    transformed like the image, for the model to embed.
    """

    @configurable
    def __init__(self, is_train, *, augmentations, image_format="BGR", oracle_boxes=False):
        self.is_train = is_train
        self.oracle_boxes = oracle_boxes
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        logger.info("[PersonSearchDatasetMapper] %s augmentations: %s", "train" if is_train else "test",
                    augmentations)

    @classmethod
    def from_config(cls, cfg, is_train=True, oracle_boxes=False):
        ps = cfg.INPUT.PS
        if is_train:
            if ps.TRAIN_SCALE_MODE not in TRAIN_SCALE_MODES:
                raise ValueError(f"INPUT.PS.TRAIN_SCALE_MODE is {ps.TRAIN_SCALE_MODE!r}, expected one of {TRAIN_SCALE_MODES}")
            if ps.TRAIN_SCALE_MODE == "value":
                augs = [ChoiceLongShortResize(ps.TRAIN_SCALES)]
            else:
                augs = [RandomLongShortResize(ps.TRAIN_LONG_SIDE_RANGE, ps.TRAIN_SHORT_SIDE_RANGE)]
            if ps.HFLIP_PROB > 0:
                augs.append(T.RandomFlip(prob=ps.HFLIP_PROB, horizontal=True, vertical=False))
        else:
            augs = [LongShortResize(ps.TEST_LONG_SIDE, ps.TEST_SHORT_SIDE)]
        return {"is_train": is_train, "augmentations": augs, "image_format": cfg.INPUT.FORMAT,
                "oracle_boxes": oracle_boxes}

    def _read(self, file_name):
        try:
            return utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise OSError(f"Unreadable image {file_name}: {e}") from e

    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = self._read(d["file_name"])
        utils.check_image_size(d, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        hw = image.shape[:2]
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annos = d.pop("annotations", None)
        query = d.pop("query", None)
        if self.is_train:
            d["instances"] = self._instances(annos or [], transforms, hw)
        if self.oracle_boxes and not self.is_train and query is None:
            d["oracle_instances"] = self._instances(annos or [], transforms, hw)
        if query is not None:
            box = transforms.apply_box(np.asarray([query["bbox"]], dtype=np.float64))[0]
            inst = Instances(hw)
            inst.gt_boxes = Boxes(torch.as_tensor(box, dtype=torch.float32).view(1, 4))
            inst.gt_pids = torch.tensor([int(query["person_id"])], dtype=torch.int64)
            d["query_instances"] = inst
        return d

    @staticmethod
    def _instances(annos, transforms, hw):
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
        boxes = transforms.apply_box(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)) if boxes else np.zeros((0, 4))
        inst = Instances(hw)
        inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_boxes.clip(hw)
        inst.gt_classes = torch.zeros(len(annos), dtype=torch.int64)
        inst.gt_pids = torch.tensor([int(a.get("person_id", -1)) for a in annos], dtype=torch.int64)
        if any("attributes" in a for a in annos):
            lengths = {len(a["attributes"]) for a in annos if "attributes" in a}
            if len(lengths) != 1:
                raise ValueError(f"Annotations of one image carry attribute lists of lengths {sorted(lengths)}")
            n = lengths.pop()
            inst.gt_attributes = torch.tensor([a.get("attributes", [-1] * n) for a in annos],
                                              dtype=torch.int64).reshape(-1, n)
        return inst
