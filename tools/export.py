#!/usr/bin/env python
"""Export a trained GALW-PS model for deployment: torch.export (.pt2) and ONNX programs for gallery
indexing (image -> boxes, scores, embeddings) and query embedding (image + boxes -> embeddings).

    python tools/export.py --config-file C.yaml --weights model_final.pth --out exported/ \
        [--format torch_export|onnx|both] [--image sample.jpg]
    python tools/search.py index --exported exported/ [--exported-format onnx] --gallery photos/ --out index.pt

Writes OUT/gallery.pt2 and OUT/query.pt2 (torch.export ExportedPrograms), OUT/gallery.onnx and
OUT/query.onnx (ONNX from the same programs, run with onnxruntime), both by default, and
OUT/export.json (formats, input channel order, test-size bounds, search score threshold, embedding
size, the largest |exported - eager| difference of each output on the example image). What is
exported and its limits: projects/GALW/docs/export.md.
"""
import argparse
import json
import logging
import os

import galw  # noqa: F401  (before detectron2: compat and registrations)
import numpy as np
import torch
from detectron2.data import detection_utils
from detectron2.data import transforms as T

from galw.export import DEFAULT_FORMATS, FORMATS, build_inference_model, export_model

logger = logging.getLogger("galw.export")


def example_inputs(cfg, image_path=None, seed=0):
    """(uint8 [3, H, W] image at the test size, one query box [1, 4] in its centre) to export with:
    ``image_path`` resized as the search tool does, else a noise image of the test size."""
    short, longest = int(cfg.INPUT.PS.TEST_SHORT_SIDE), int(cfg.INPUT.PS.TEST_LONG_SIDE)
    if image_path:
        image = detection_utils.read_image(image_path, format=cfg.INPUT.FORMAT)
    else:
        image = np.random.default_rng(seed).integers(0, 256, (short, longest, 3), dtype=np.uint8)
    image = T.ResizeShortestEdge([short, short], longest).get_transform(image).apply_image(image)
    h, w = image.shape[:2]
    box = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], dtype=torch.float32)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), box


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="folder for the programs and export.json")
    parser.add_argument("--format", choices=[*FORMATS, "both"], default="both",
                        help="programs to write: torch_export, onnx (needs onnx, onnxscript and onnxruntime) or both "
                             "(default)")
    parser.add_argument("--image", help="example image to export with (default: noise at the test size)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg, model = build_inference_model(args.config_file, args.weights, args.opts)
    image, box = example_inputs(cfg, args.image)
    formats = list(DEFAULT_FORMATS) if args.format == "both" else [args.format]
    meta = export_model(model, cfg, args.out, image.to(cfg.MODEL.DEVICE), box.to(cfg.MODEL.DEVICE), formats, meta={
        "config_file": os.path.abspath(args.config_file), "weights": os.path.abspath(args.weights), "opts": args.opts,
    })
    print(json.dumps(meta["max_abs_diff_on_example"]))
    print(f"exported to {args.out}")
    return meta


if __name__ == "__main__":
    main()
