#!/usr/bin/env python
"""Inference speed of person-search models at 1500x900, beside torchvision's Faster R-CNN.

    PYTHONPATH=projects/GALW:. python benchmarks/inference_speed.py \
        [--config-file projects/GALW/configs/nae/nae_R50_cuhk.yaml --config-file other.yaml ...] \
        [--device cpu|cuda] [--amp] [--num-images 5] [--warmup 2] [KEY VALUE ...]

Without --config-file it times the paper's three models: NAE, AlignPS and ROI-AlignPS* (R-50, CUHK-SYSU).

Every model (torchvision's ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` as the
common yardstick, then each --config-file) runs on the SAME synthetic 1500x900 images, one image
per forward, in this one process, round robin (each image through every model in turn); the script
prints ms per image and the ratio to the yardstick. Random weights (no checkpoint is needed): the models still keep their fixed
proposal / detection budgets, so the timing is that of a trained model up to the number of
boxes surviving the score threshold. AlignPS's random-init classifier scores every location near
its prior (0.01), below MODEL.ALIGNPS.SCORE_THRESH_TEST, so for timing that threshold is set to 0:
its full pre-NMS top-k goes through NMS and DETECTIONS_PER_IMAGE boxes are embedded (the most
work a trained model can do). --amp runs the person-search models under CUDA autocast (fp16), as
the paper's speed setting. Paper figures (TITAN RTX, ms per image): NAE 85,
AlignPS 65, ROI-AlignPS* 69.
"""
import argparse
import statistics
import time

import galw  # noqa: F401  (before detectron2)
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from galw.config_file import merge_config_file
from result_file import save

WIDTH, HEIGHT = 1500, 900
PAPER_MODELS = [
    "projects/GALW/configs/nae/nae_R50_cuhk.yaml",
    "projects/GALW/configs/alignps/alignps_R50_cuhk.yaml",
    "projects/GALW/configs/alignps/roi_alignps_R50_cuhk.yaml",
]


def synthetic_images(num, seed=0):
    """uint8 CHW images (BGR order is irrelevant for timing) with a few bright person-like boxes."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(num):
        img = torch.randint(0, 80, (3, HEIGHT, WIDTH), generator=g, dtype=torch.uint8)
        for _ in range(6):
            w, h = int(torch.randint(40, 160, (1,), generator=g)), int(torch.randint(120, 400, (1,), generator=g))
            x, y = int(torch.randint(0, WIDTH - w, (1,), generator=g)), int(torch.randint(0, HEIGHT - h, (1,), generator=g))
            img[:, y : y + h, x : x + w] = torch.randint(100, 255, (3, 1, 1), generator=g, dtype=torch.uint8)
        images.append(img)
    return images


def build_person_search(config_file, opts, device, amp=False):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts))
    # timing needs no ImageNet file and no dataset; OIM memories play no part in inference
    cfg.merge_from_list(["MODEL.PERSON_SEARCH.PRETRAINED", "", "DATASETS.TRAIN", (), "MODEL.DEVICE", device])
    if cfg.MODEL.OIM.NUM_LABELED <= 0:
        cfg.merge_from_list(["MODEL.OIM.NUM_LABELED", 1])
    if "AlignPSBranch" in cfg.MODEL.PERSON_SEARCH.BRANCHES:
        cfg.merge_from_list(["MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.0])
    if (cfg.INPUT.PS.TEST_SHORT_SIDE, cfg.INPUT.PS.TEST_LONG_SIDE) != (HEIGHT, WIDTH):
        raise ValueError(
            f"{config_file}: INPUT.PS.TEST_SHORT_SIDE/TEST_LONG_SIDE should be {HEIGHT}/{WIDTH} (the paper's test size)"
        )
    model = build_model(cfg).eval()

    def run(image):
        with torch.autocast("cuda", enabled=amp):
            return model([{"image": image, "height": HEIGHT, "width": WIDTH}])

    return run


def build_torchvision(device):
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=HEIGHT, max_size=WIDTH
    ).to(device).eval()
    return lambda image: model([image.float().div_(255)])


def time_models(runs, images, device, warmup):
    """Milliseconds per image (median over images) per model, after ``warmup`` untimed images each.

    Round robin: every image goes through every model before the next image, so that a machine
    shared with other jobs loads all models alike (their ratios hold while the load drifts)."""
    times = [[] for _ in runs]
    with torch.inference_mode():
        for i, image in enumerate(images[:warmup] + images):
            image = image.to(device)
            for run, own in zip(runs, times):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run(image)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i >= warmup:
                    own.append((time.perf_counter() - start) * 1000)
    return [(statistics.median(t), t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config-file", action="append", help="person-search config (repeatable); default: NAE, AlignPS, ROI-AlignPS*"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="CUDA autocast for the person-search models")
    parser.add_argument("--num-images", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every --config-file")
    args = parser.parse_args()
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp needs --device cuda")
    config_files = args.config_file or PAPER_MODELS

    images = synthetic_images(args.num_images)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {args.device} ({name}); {args.num_images} images of {WIDTH}x{HEIGHT}, warm-up {args.warmup}"
        + ("; person-search models under AMP" if args.amp else "")
    )
    names = ["torchvision fasterrcnn_resnet50_fpn"] + [c.split("configs/")[-1] for c in config_files]
    runs = [build_torchvision(args.device)] + [build_person_search(c, args.opts, args.device, args.amp) for c in config_files]
    timed = time_models(runs, images, args.device, args.warmup)
    ref_ms = timed[0][0]
    rows = []
    for model_name, (ms, all_ms) in zip(names, timed):
        print(f"{model_name:<45s} {ms:9.1f} ms/image  ({ms / ref_ms:.2f}x)  per image: " + ", ".join(f"{t:.0f}" for t in all_ms))
        rows.append({"model": model_name, "ms/image (median)": round(ms, 1), "ratio": round(ms / ref_ms, 2)})
    save("inference_" + args.device + ("_amp" if args.amp else ""), {
        "settings": {"device": name, "images": f"{args.num_images} of {WIDTH}x{HEIGHT}", "warm-up": args.warmup,
                     "amp": args.amp, "order": "round robin"},
        "rows": rows}, device=args.device)


if __name__ == "__main__":
    main()
