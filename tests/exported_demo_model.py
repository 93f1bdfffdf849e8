"""The demo's model (ROI-AlignPS* R-18, synthetic config, seeded random init) exported once per test run by
tools/export.py with its default formats (torch.export and ONNX), beside a tiny SynthPS gallery.

Exporting and checking both programs takes about a minute on one core, and the export and deployment-docs
tests read the same folder; pytest-xdist workers would each build their own, so the first worker that asks
builds it under a file lock and the others read it (pytest-xdist's documented way for a fixture of
``scope="session"`` that runs once per test run). Tests read these files; a test that changes them copies
them first."""
import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import cv2
import torch

import galw
from conftest import CONFIG_DIR
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tools_helpers import load_tool

#: Tiny SynthPS frames (192x144) are resized to 256x192, the portrait crop to 192x256, the wide crop to
#: 256x96. At the random init every location scores near the prior: the threshold keeps the top ~5% of
#: AlignPS's stride-8 locations, around the pre-NMS top-k of 30. Lower thresholds keep near-ties (score
#: gaps below 1e-7, under the runtimes' rounding differences) whose NMS order differs between runtimes.
OPTS = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.OIM.NUM_LABELED", "3",
        "INPUT.PS.TEST_SHORT_SIDE", "192", "INPUT.PS.TEST_LONG_SIDE", "256",
        "MODEL.ALIGNPS.SCORE_THRESH_TEST", "0.011", "MODEL.ALIGNPS.PRE_NMS_TOPK_TEST", "30",
        "MODEL.ALIGNPS.DETECTIONS_PER_IMAGE", "1000", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", "0.0"]
#: The export runs with these as errors: it must use only the paths PyTorch maintains.
WARNINGS_AS_ERRORS = (DeprecationWarning, FutureWarning)
#: What build() records for the other workers, beside the folders it writes.
BUILT = "built.json"


def build(root):
    """Write config.yaml, model.pth, synth/ (tiny SynthPS-PRW, seed 0), gallery/ (three frames, a portrait
    and a wide crop) and exported/ (tools/export.py) under ``root``; return their paths, the export's
    metadata and what the tool printed."""
    from galw.data.synthetic import generate

    root = Path(root)
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "alignps", "roi_alignps_R18_synth_cpu.yaml"))
    cfg.merge_from_list(OPTS)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("model")
    (root / "config.yaml").write_text(cfg.dump())
    generate("prw", str(root / "synth"), seed=0, size="tiny")
    gallery = root / "gallery"
    gallery.mkdir()
    frames = sorted(os.listdir(root / "synth" / "frames"))[:3]
    for name in frames:
        os.link(root / "synth" / "frames" / name, gallery / name)
    frame = cv2.imread(str(gallery / frames[1]))
    cv2.imwrite(str(gallery / "portrait.png"), frame[:, 40:148])  # resized to 192x256
    cv2.imwrite(str(gallery / "wide.png"), frame[36:108])  # 256x96
    out = root / "exported"
    # In this process (so that line coverage sees galw.export), on one thread as OMP_NUM_THREADS=1 would.
    stdout, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(stdout):
            for category in WARNINGS_AS_ERRORS:
                warnings.simplefilter("error", category)
            load_tool("export").main(["--config-file", str(root / "config.yaml"), "--weights", str(root / "model.pth"),
                                      "--out", str(out), "--image", str(gallery / frames[0])])
    finally:
        torch.set_num_threads(threads)
    with open(out / "export.json") as f:
        meta = json.load(f)
    built = {"config": str(root / "config.yaml"), "weights": str(root / "model.pth"), "gallery": str(gallery),
             "out": str(out), "meta": meta, "stdout": stdout.getvalue()}
    (root / BUILT).write_text(json.dumps(built))
    return dict(built, tmp=root)


def shared(tmp_path_factory, worker_id):
    """build()'s result, built once per test run: in this process without pytest-xdist, else by the first
    worker that asks, in the run's folder that every worker shares, under a file lock."""
    from filelock import FileLock

    if worker_id == "master":
        return build(tmp_path_factory.mktemp("exported_demo_model"))
    root = tmp_path_factory.getbasetemp().parent / "exported_demo_model"
    with FileLock(str(root) + ".lock"):
        if (root / BUILT).is_file():
            return dict(json.loads((root / BUILT).read_text()), tmp=root)
        if root.exists():
            raise RuntimeError(f"{root}: another worker's build failed (its error is reported with its test)")
        root.mkdir()
        return build(root)
