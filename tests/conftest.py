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

# One torch thread per process, child processes included (gloo ranks, tools run as commands): the
# suite runs in parallel as pytest-xdist workers (the Makefile's -n), and two threads per process on
# two busy cores cost about three times the CPU of one (the stock R-CNN training of test_train_net.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

CONFIG_DIR = os.path.join(ROOT, "projects", "GALW", "configs")

from galw.modeling.tasks import BRANCH_TASKS, TASK_KINDS  # noqa: E402,F401  (the one task order)

#: The person-search tasks, one loss key each, in task order (galw.modeling.tasks).
NAE_TASKS = list(BRANCH_TASKS["NAEBranch"])  # t1..t5
ALIGNPS_TASKS = list(BRANCH_TASKS["AlignPSBranch"])  # t6..t10
ROI_ALIGNPS_TASKS = NAE_TASKS + ALIGNPS_TASKS
ROI_ALIGNPS_ATTR_TASKS = ROI_ALIGNPS_TASKS + list(BRANCH_TASKS["AttributeBranch"])  # t11


def pytest_collection_modifyitems(config, items):
    """Test files with the most ``slow`` tests run first, so that pytest-xdist (``--dist loadfile``: a file
    per worker, in this order) gives the longest files out first and the many short ones fill the
    workers' ends (longest-first scheduling); the order within a file is kept. Tests marked ``gpu``
    are skipped where CUDA is not available."""
    slow_per_file = {}
    for item in items:
        slow_per_file[item.path] = slow_per_file.get(item.path, 0) + ("slow" in item.keywords)
    items.sort(key=lambda item: -slow_per_file[item.path])  # stable: files stay whole, in collection order on ties
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


def register_box_dataset(name, image_dir):
    """Register tiny box images (write_box_images) as detectron2 dataset ``name``; returns its cleanup."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = write_box_images(str(image_dir))
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"])

    def cleanup():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    return cleanup


@pytest.fixture
def box_dataset(tmp_path):
    """A registered tiny detection dataset; yields its name and removes it afterwards."""
    name = f"galw_test_boxes_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    cleanup = register_box_dataset(name, tmp_path / "images")
    yield name
    cleanup()


#: The stock Faster R-CNN at test size: 64-pixel images, 8 ROIs per image pooled to 4x4 (res5 runs on
#: each ROI in the C4 head), a fifth of the CPU time of the config's own sizes per iteration.
STOCK_RCNN_TEST_SIZE = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 8, "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4,
]


def stock_rcnn_cfg(dataset_name, output_dir, *opts):
    """The stock Faster R-CNN CPU config on a test dataset, at test size."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml"))
    cfg.merge_from_list(
        ["DATASETS.TRAIN", (dataset_name,), "DATASETS.TEST", (), "OUTPUT_DIR", str(output_dir), "SEED", 1]
        + STOCK_RCNN_TEST_SIZE + list(opts)
    )
    return cfg


@pytest.fixture(scope="session")
def stock_rcnn_trained(tmp_path_factory):
    """train_net.Trainer's stock Faster R-CNN trained one iteration on tiny box images, once per test
    run: {"trainer", "dataset" (its registered name), "output_dir" (model_final.pth, last_checkpoint,
    metrics.json)}. Tests read it; a test that writes checkpoints copies ``output_dir`` first."""
    import train_net

    root = tmp_path_factory.mktemp("stock_rcnn")
    name = f"galw_test_boxes_run_{os.getpid()}"
    cleanup = register_box_dataset(name, root / "images")
    trainer = train_net.Trainer(stock_rcnn_cfg(name, root / "output", "SOLVER.MAX_ITER", 1))
    trainer.train()
    yield {"trainer": trainer, "dataset": name, "output_dir": root / "output"}
    cleanup()


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


#: Where ``galw.data.synthetic`` datasets live under $DETECTRON2_DATASETS (galw/data/builtin.py).
SYNTHPS_FOLDERS = {"prw": "SynthPS-PRW", "cuhk": "SynthPS-CUHK"}


@pytest.fixture(scope="session")
def synthps_tiny(tmp_path_factory):
    """SynthPS at size tiny, seed 0, generated once per test run (per pytest-xdist worker): a function
    of the layout ("prw" or "cuhk") giving the datasets root that holds it. Tests read these files;
    a test that changes a dataset generates its own."""
    from galw.data.synthetic import generate

    roots = {}

    def root(layout="prw"):
        if layout not in roots:
            roots[layout] = tmp_path_factory.mktemp(f"synthps_{layout}")
            generate(layout, str(roots[layout] / SYNTHPS_FOLDERS[layout]), seed=0, size="tiny")
        return roots[layout]

    return root


@pytest.fixture(scope="module")
def tiny_synth_prw(synthps_tiny):
    """The tiny SynthPS-PRW as $DETECTRON2_DATASETS (read when a split loads) for a module's tests."""
    root = synthps_tiny("prw")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(root))
        yield root


@pytest.fixture(scope="session")
def exported_demo_model(tmp_path_factory, worker_id):
    """The demo's model exported by tools/export.py, once per test run (tests/exported_demo_model.py):
    {"tmp", "config", "weights", "gallery", "out" (the export folder), "meta" (its export.json), "stdout"}."""
    from exported_demo_model import shared

    return shared(tmp_path_factory, worker_id)
