"""Helpers of the AlignPS tests: a tiny synthetic training batch in the contract's format."""
import numpy as np
import torch

from detectron2.structures import Boxes, Instances

# (box [x1, y1, x2, y2] in a 128x96 image, person id): ids 0..2 labeled, -1 unlabeled
SYNTH_PEOPLE = [
    [([10, 14, 34, 70], 0), ([52, 20, 76, 84], 1), ([90, 8, 118, 60], -1)],
    [([8, 30, 30, 88], 1), ([44, 6, 70, 62], 2), ([84, 26, 112, 90], 0)],
]
SYNTH_NUM_PIDS = 3
_COLOURS = {0: (40, 200, 230), 1: (220, 60, 60), 2: (60, 220, 90), -1: (180, 180, 180)}


def synthetic_batch(seed: int = 0):
    """Two 128x96 BGR images with textured person rectangles; training dicts as docs/models.md describes them."""
    rng = np.random.default_rng(seed)
    batch = []
    for people in SYNTH_PEOPLE:
        img = rng.integers(0, 50, size=(96, 128, 3), dtype=np.uint8)
        for (x1, y1, x2, y2), pid in people:
            img[y1:y2, x1:x2] = _COLOURS[pid]
            img[y1 + (y2 - y1) // 2 : y2, x1:x2] //= 2  # darker legs: a shape cue beyond colour
        inst = Instances((96, 128))
        inst.gt_boxes = Boxes(torch.tensor([b for b, _ in people], dtype=torch.float32))
        inst.gt_classes = torch.zeros(len(people), dtype=torch.int64)
        inst.gt_pids = torch.tensor([p for _, p in people], dtype=torch.int64)
        batch.append(
            {"image": torch.from_numpy(img).permute(2, 0, 1).contiguous(), "height": 96, "width": 128, "instances": inst}
        )
    return batch


def small_branch_cfg():
    """An R-18 config whose shared backbone outputs res3/res4, with a small AlignPS branch."""
    import galw
    from detectron2.config import get_cfg

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.MODEL.OIM.NUM_LABELED = SYNTH_NUM_PIDS
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ALIGNPS.FPN_CHANNELS = 32
    cfg.MODEL.ALIGNPS.NUM_CONVS = 1
    cfg.MODEL.ALIGNPS.OIM_QUEUE_SIZE = 16
    return cfg


def normalized_images(cfg, batch):
    from detectron2.structures import ImageList

    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    return ImageList.from_tensors([(b["image"].float() - mean) / std for b in batch], 32)
