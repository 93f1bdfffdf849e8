"""Shared test helpers: the repo root on sys.path (for train_net), tiny detection data."""
import logging
import os
import sys

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
# This checkout's package and train_net.py come first (also in other worktrees).
for _p in (os.path.join(ROOT, "projects", "GALW"), ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import galw  # noqa: E402,F401  (compat before any detectron2 import)
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CONFIG_DIR = os.path.join(ROOT, "projects", "GALW", "configs")

from galw.modeling.tasks import BRANCH_TASKS, TASK_KINDS  # noqa: E402,F401  (the one task order)

#: The person-search tasks, one loss key each, in task order (galw.modeling.tasks).
NAE_TASKS = list(BRANCH_TASKS["NAEBranch"])  # t1..t5
ALIGNPS_TASKS = list(BRANCH_TASKS["AlignPSBranch"])  # t6..t10
ROI_ALIGNPS_TASKS = NAE_TASKS + ALIGNPS_TASKS
ROI_ALIGNPS_ATTR_TASKS = ROI_ALIGNPS_TASKS + list(BRANCH_TASKS["AttributeBranch"])  # t11


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_box_images(out_dir, num_images=4, size=(160, 128), seed=0):
    """Write images with 1-3 bright rectangles each; return detectron2 dataset dicts."""
    import cv2
    from detectron2.structures import BoxMode

    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    w, h = size
    records = []
    for i in range(num_images):
        img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        annos = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(20, 50)), int(rng.integers(40, 80))
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y1 : y1 + bh, x1 : x1 + bw] = rng.integers(120, 255, size=3)
            annos.append(
                {"bbox": [x1, y1, x1 + bw, y1 + bh], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
            )
        path = os.path.join(out_dir, f"img_{i:03d}.png")
        cv2.imwrite(path, img)
        records.append({"file_name": path, "image_id": i, "height": h, "width": w, "annotations": annos})
    return records


def write_video(path, frames, fps):
    """Write BGR ``frames`` as an MJPG video at ``fps`` (the video-gallery tests)."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture
def box_dataset(tmp_path):
    """A registered tiny detection dataset; yields its name and removes it afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"galw_test_boxes_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    records = write_box_images(str(tmp_path / "images"))
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def stock_rcnn_cfg(dataset_name, output_dir, *opts):
    """The stock Faster R-CNN CPU config on a test dataset."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml"))
    cfg.merge_from_list(
        ["DATASETS.TRAIN", (dataset_name,), "DATASETS.TEST", (), "OUTPUT_DIR", str(output_dir), "SEED", 1]
        + list(opts)
    )
    return cfg


def free_port():
    """A free TCP port on the loopback, for the 2-process gloo tests."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(compute_losses, params, steps, lr):
    """SGD (momentum 0.9, grad-norm clip 10 as the configs) on ``compute_losses()``'s summed dict.

    Returns each step's losses as floats; runs inside an EventStorage (detectron2's heads log into it).
    """
    from detectron2.utils.events import EventStorage

    params = list(params)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    history = []
    with EventStorage(0) as storage:
        for step in range(steps):
            storage.iter = step
            losses = compute_losses()
            history.append({k: v.item() for k, v in losses.items()})
            opt.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
    return history


@pytest.fixture(autouse=True)
def _galw_records_reach_caplog():
    """Entry points give the "galw" and "galw_core" loggers detectron2's handlers, which stop
    propagation to the root logger; caplog listens there, so every test starts with propagation back on."""
    for name in ("galw", "galw_core"):
        logging.getLogger(name).propagate = True
    yield


@pytest.fixture(scope="module")
def tiny_synth_prw(tmp_path_factory):
    """SynthPS-PRW at size tiny under a temporary $DETECTRON2_DATASETS (read when a split loads),
    trained on with one torch thread."""
    from galw.data.synthetic import generate

    root = tmp_path_factory.mktemp("datasets")
    generate("prw", str(root / "SynthPS-PRW"), seed=0, size="tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(root))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield root
        torch.set_num_threads(threads)
