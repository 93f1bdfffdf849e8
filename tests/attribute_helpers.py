"""Helpers for the attribute tests: a small AttributeBranch and feature maps that carry attributes."""
import torch

import galw  # noqa: F401  (compat before detectron2)
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances

from galw.modeling import build_branch

#: Two shared levels as the meta-architecture hands them over (tiny channel counts).
SHAPES = {"res3": ShapeSpec(channels=8, stride=8), "res4": ShapeSpec(channels=16, stride=16)}
IMAGE_SIZE = 128


def small_cfg(num_attributes=4, **overrides):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.MODEL.ATTRIBUTE.NUM_ATTRIBUTES = num_attributes
    cfg.MODEL.ATTRIBUTE.CONV_DIM = 16
    cfg.MODEL.ATTRIBUTE.SE_REDUCTION = 4
    for key, value in overrides.items():
        cfg.MODEL.ATTRIBUTE[key] = value
    return cfg


def small_branch(num_attributes=4, **overrides):
    return build_branch("AttributeBranch", small_cfg(num_attributes, **overrides), SHAPES)


def instances(boxes, attributes):
    inst = Instances((IMAGE_SIZE, IMAGE_SIZE))
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_attributes = torch.as_tensor(attributes, dtype=torch.int64)
    return inst


def attribute_scene(generator, num_images=4, boxes_per_image=2, num_attributes=4):
    """Noise feature maps where attribute ``a`` of a box lights channel ``a`` in the a-th horizontal band of the box.

    Returns (features, gt_instances): the band ties each attribute to a place in the
    person box, as hats sit on heads and shoes on feet.
    """
    feats = {
        name: torch.randn(num_images, s.channels, IMAGE_SIZE // s.stride, IMAGE_SIZE // s.stride, generator=generator) * 0.3
        for name, s in SHAPES.items()
    }
    gts = []
    for i in range(num_images):
        boxes, labels = [], []
        column = IMAGE_SIZE // boxes_per_image
        for k in range(boxes_per_image):  # one box per column with 8 px margins: no box covers another's pattern
            w = column - 16 - int(torch.randint(0, 9, (1,), generator=generator))
            h = 64 + int(torch.randint(0, 33, (1,), generator=generator))
            x1 = k * column + 8 + int(torch.randint(0, column - 16 - w + 1, (1,), generator=generator))
            y1 = int(torch.randint(0, IMAGE_SIZE - h + 1, (1,), generator=generator))
            attrs = torch.randint(0, 2, (num_attributes,), generator=generator)
            for a in range(num_attributes):
                if attrs[a]:
                    band_y1 = y1 + h * a / num_attributes
                    band_y2 = y1 + h * (a + 1) / num_attributes
                    for name, s in SHAPES.items():
                        r1, r2 = int(band_y1 // s.stride), max(int(band_y1 // s.stride) + 1, int(band_y2 // s.stride))
                        c1, c2 = int(x1 // s.stride), max(int(x1 // s.stride) + 1, int((x1 + w) // s.stride))
                        feats[name][i, a, r1:r2, c1:c2] += 2.0
            boxes.append([x1, y1, x1 + w, y1 + h])
            labels.append(attrs.tolist())
        gts.append(instances(boxes, labels))
    return feats, gts
