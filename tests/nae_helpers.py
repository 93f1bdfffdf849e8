"""Helpers for the NAE / meta-architecture tests: a tiny CPU config and a synthetic batch."""
import os

import torch

import galw
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from conftest import CONFIG_DIR


#: (top colour, bottom colour) in BGR of each labeled identity; -1 is an unlabeled person.
PERSON_COLOURS = {
    0: ((0, 0, 255), (255, 0, 0)),
    1: ((0, 255, 0), (0, 0, 128)),
    2: ((255, 255, 0), (0, 128, 255)),
    -1: ((200, 200, 200), (60, 60, 60)),
}


def tiny_nae_cfg(*opts):
    """The R-18 synthetic CPU config, shrunk for tests: 3 labeled identities, no datasets."""
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "nae", "nae_R18_synth_cpu.yaml"))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", (),
            "DATASETS.TEST", (),
            "MODEL.OIM.NUM_LABELED", 3,
            "MODEL.OIM.QUEUE_SIZE", 8,
            "MODEL.NAE.EMBEDDING_DIM", 32,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
            "SEED", 0,
        ]
        + list(opts)
    )
    return cfg


def _person_image(height, width, people, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 50, (3, height, width), generator=g, dtype=torch.uint8)
    for pid, (x1, y1, x2, y2) in people:
        top, bottom = PERSON_COLOURS[pid]
        mid = (y1 + y2) // 2
        image[:, y1:mid, x1:x2] = torch.tensor(top, dtype=torch.uint8)[:, None, None]
        image[:, mid:y2, x1:x2] = torch.tensor(bottom, dtype=torch.uint8)[:, None, None]
    return image


def synthetic_batch():
    """Two 96x128 training dicts (the training input format of docs/models.md) with 3 and 2 people."""
    layouts = [
        [(0, (8, 10, 34, 80)), (1, (50, 20, 74, 86)), (-1, (92, 8, 118, 70))],
        [(2, (14, 24, 40, 90)), (0, (80, 6, 104, 72))],
    ]
    batch = []
    for i, people in enumerate(layouts):
        h, w = 96, 128
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([box for _, box in people], dtype=torch.float32))
        inst.gt_classes = torch.zeros(len(people), dtype=torch.int64)
        inst.gt_pids = torch.tensor([pid for pid, _ in people], dtype=torch.int64)
        batch.append({
            "image": _person_image(h, w, people, seed=i), "height": h, "width": w, "instances": inst,
            "file_name": f"synthetic_{i}.png", "image_id": i,
        })
    return batch
