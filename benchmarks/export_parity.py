#!/usr/bin/env python
"""Eager model vs its torch.export program (.pt2) vs its ONNX program (onnxruntime): outputs and speed.

    PYTHONPATH=projects/GALW:. python benchmarks/export_parity.py \
        [--config-file projects/GALW/configs/alignps/roi_alignps_R18_synth_cpu.yaml] [--num-images 5] [KEY VALUE ...]

The config's model at a seeded random init (no checkpoint needed) is exported by ``galw.export``
(both formats, example image: the first one) and run on ``--num-images`` tiny SynthPS frames resized
to the config's test size, as tools/search.py resizes. Per program: the largest |program - eager| of
boxes, scores and embeddings (each program's detections matched to the eager ones by box; their
counts must agree) and of the query embedding of one box per image, and ms per image (gallery
indexing + one query, median over the images, after one warm-up run). AlignPS's random-init
classifier scores every location near its prior: MODEL.ALIGNPS.SCORE_THRESH_TEST 0.011 keeps the top
few percent of them (lower thresholds keep near-ties that NMS orders differently per runtime,
docs/export.md). Prints a table and writes results/benchmarks/export_parity.json.
"""
import argparse
import os
import statistics
import tempfile
import time

import galw  # noqa: F401  (before detectron2)
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from galw.config_file import merge_config_file
from galw.data.synthetic import generate
from galw.export import GalleryIndexer, QueryEmbedder, export_model
from galw.exported import load_exported
from result_file import save

CONFIG = "projects/GALW/configs/alignps/roi_alignps_R18_synth_cpu.yaml"
OPTS = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.OIM.NUM_LABELED", "3",
        "MODEL.ALIGNPS.SCORE_THRESH_TEST", "0.011"]
RUNTIMES = ("eager", "torch_export", "onnx")


def images_at_test_size(cfg, folder, count):
    """``count`` tiny SynthPS frames (uint8 [3, H, W], INPUT.FORMAT order) resized to the test size."""
    generate("prw", folder, seed=0, size="tiny")
    frames = sorted(os.listdir(os.path.join(folder, "frames")))[:count]
    resize = T.ResizeShortestEdge([cfg.INPUT.PS.TEST_SHORT_SIDE] * 2, cfg.INPUT.PS.TEST_LONG_SIDE)
    out = []
    for name in frames:
        image = detection_utils.read_image(os.path.join(folder, "frames", name), format=cfg.INPUT.FORMAT)
        image = resize.get_transform(image).apply_image(image)
        out.append(torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))))
    return out


def max_diff(want, got):
    """Largest |got - want| of (boxes, scores, embeddings), got's rows matched to want's by box."""
    if want[0].shape != got[0].shape:
        raise RuntimeError(f"detection counts differ: eager {len(want[0])}, program {len(got[0])}")
    if not len(want[0]):
        return 0.0, 0.0, 0.0
    order = torch.cdist(want[0].double(), got[0].double(), p=float("inf")).argmin(dim=1)
    return tuple(float((b[order] - a).abs().max()) for a, b in zip(want, got))


def timed(fn, *args):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn(*args)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--num-images", type=int, default=5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    merge_config_file(cfg, args.config_file)
    cfg.merge_from_list(OPTS + list(args.opts))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        images = images_at_test_size(cfg, os.path.join(tmp, "synth"), args.num_images)
        h, w = images[0].shape[1:]
        box = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]])
        start = time.perf_counter()
        export_model(model, cfg, os.path.join(tmp, "exported"), images[0], box)
        export_s = time.perf_counter() - start
        programs = {"eager": (GalleryIndexer(model), QueryEmbedder(model))}
        for fmt in RUNTIMES[1:]:
            programs[fmt] = load_exported(os.path.join(tmp, "exported"), fmt)[:2]
    seconds = {r: [] for r in RUNTIMES}
    diffs = {r: [0.0] * 4 for r in RUNTIMES[1:]}
    counts = []
    for image in images:
        outputs = {}
        for runtime, (gallery, query) in programs.items():
            timed(gallery, image)  # warm-up
            detections, t_gallery = timed(gallery, image)
            embedding, t_query = timed(query, image, box)
            outputs[runtime] = detections, embedding
            seconds[runtime].append(t_gallery + t_query)
        counts.append(len(outputs["eager"][0][0]))
        for runtime in RUNTIMES[1:]:
            got = (*max_diff(outputs["eager"][0], outputs[runtime][0]),
                   float((outputs[runtime][1] - outputs["eager"][1]).abs().max()))
            diffs[runtime] = [max(a, b) for a, b in zip(diffs[runtime], got)]
    ms = {r: 1000 * statistics.median(s) for r, s in seconds.items()}
    print(f"{args.config_file}: {len(images)} images {h}x{w}, detections {counts}, {torch.get_num_threads()} threads")
    print(f"{'runtime':<14}{'boxes':>10}{'scores':>10}{'embeddings':>12}{'query':>10}{'ms/image':>10}")
    print(f"{'eager':<14}{'-':>10}{'-':>10}{'-':>12}{'-':>10}{ms['eager']:>10.1f}")
    for runtime in RUNTIMES[1:]:
        b, s, e, q = diffs[runtime]
        print(f"{runtime:<14}{b:>10.2e}{s:>10.2e}{e:>12.2e}{q:>10.2e}{ms[runtime]:>10.1f}")
    save("export_parity", {
        "config_file": args.config_file, "opts": OPTS + list(args.opts), "num_images": len(images),
        "image_size": [h, w], "detections": counts, "threads": torch.get_num_threads(), "export_s": export_s,
        "ms_per_image": ms,
        "max_abs_diff": {r: dict(zip(("boxes", "scores", "embeddings", "query_embedding"), diffs[r]))
                         for r in RUNTIMES[1:]},
    })


if __name__ == "__main__":
    main()
