"""detectron2 structure operations whose sizes stay symbolic under ``torch.export``.

detectron2 computes a padded size, a pooler's image indices and a box count from tensors or
branches on them (data-dependent guards ``torch.export`` cannot take); each function here gives
the same values in eager mode and keeps the image size and the detection count symbolic in an
exported program (``galw.export``).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, ImageList, Instances

__all__ = ["boxes_of", "clip_boxes", "instances_of", "pad_image", "pool_boxes", "pooler_boxes"]


def pad_image(image: torch.Tensor, size_divisibility: int) -> ImageList:
    """``ImageList.from_tensors([image], size_divisibility)`` (the same tensor and sizes), its padded
    size computed from the shape in integer ops: detectron2 builds it from tensors of the sizes
    (structures/image_list.py, ``shapes_to_tensor``), a data-dependent size."""
    height, width = image.shape[-2:]
    d = max(int(size_divisibility), 1)
    padding = [0, (width + d - 1) // d * d - width, 0, (height + d - 1) // d * d - height]
    return ImageList(F.pad(image, padding, value=0.0).unsqueeze(0).contiguous(), [(height, width)])


def pooler_boxes(boxes: List[Boxes]) -> torch.Tensor:
    """detectron2's ``convert_boxes_to_pooler_format`` rows (image index, x1, y1, x2, y2), the index
    filled per image: detectron2 repeats it over a tensor of the counts (modeling/poolers.py), an
    output size that ``torch.export`` cannot relate to the boxes' count."""
    return torch.cat([torch.cat([b.tensor.new_full((b.tensor.shape[0], 1), float(i)), b.tensor], dim=1)
                      for i, b in enumerate(boxes)])


def pool_boxes(pooler, maps: List[torch.Tensor], boxes: List[Boxes]) -> Tuple[torch.Tensor, int]:
    """(``pooler(maps, boxes)``, the number of extra rows after the boxes'). A one-level pooler pools
    ``pooler_boxes`` rows (its own path, modeling/poolers.py); exporting, a zero box is appended: torch's
    convolution shape function branches on an empty batch, a guard on the detection count."""
    if len(pooler.level_poolers) != 1:
        return pooler(maps, boxes), 0
    rois = pooler_boxes(boxes)
    extra = 1 if torch.compiler.is_exporting() else 0
    if extra:
        rois = torch.cat([rois, rois.new_zeros((1, 5))])
    return pooler.level_poolers[0](maps[0], rois), extra


def boxes_of(tensor: torch.Tensor) -> Boxes:
    """``Boxes(tensor)`` of a float [N, 4] tensor. Exporting, it is wrapped as it is: ``Boxes``
    branches on ``numel() == 0`` (structures/boxes.py, ``__init__``), a guard on the detection count."""
    if not torch.compiler.is_exporting():
        return Boxes(tensor)
    torch._check(tensor.dim() == 2 and tensor.shape[1] == 4)
    boxes = Boxes.__new__(Boxes)
    boxes.tensor = tensor
    return boxes


def clip_boxes(boxes: Boxes, box_size: Tuple[int, int]) -> None:
    """``boxes.clip(box_size)`` in place. Exporting, without its ``assert isfinite(...).all()``
    (structures/boxes.py, ``clip``), a guard on the boxes' values; the clamps are the same."""
    if not torch.compiler.is_exporting():
        boxes.clip(box_size)
        return
    h, w = box_size
    t = boxes.tensor
    boxes.tensor = torch.stack((t[:, 0].clamp(min=0, max=w), t[:, 1].clamp(min=0, max=h),
                                t[:, 2].clamp(min=0, max=w), t[:, 3].clamp(min=0, max=h)), dim=-1)


def instances_of(image_size: Tuple[int, int], **fields) -> Instances:
    """``Instances(image_size, **fields)``. Exporting, the fields are stored without the length check
    of ``Instances.set`` (structures/instances.py), whose ``len()`` would fix a symbolic count."""
    if not torch.compiler.is_exporting():
        return Instances(image_size, **fields)
    instances = Instances(image_size)
    instances._fields.update(fields)
    return instances
