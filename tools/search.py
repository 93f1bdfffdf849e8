#!/usr/bin/env python
"""Person search on your own images with a trained GALW-PS model.

Direct (index the gallery in memory, answer one query):
    python tools/search.py search --config-file C.yaml --weights model_final.pth \\
        --gallery photos/ --query-image me.jpg --box 120 40 220 380 --topk 10 --out results/

Index once, query many times (the index stores the config and weights paths):
    python tools/search.py index --config-file C.yaml --weights model_final.pth --gallery photos/ --out index.pt
    python tools/search.py query --index index.pt --query-image me.jpg --box 120 40 220 380 --topk 10 --out results/

With the torch.export (.pt2) or ONNX programs of tools/export.py instead of config + weights:
    python tools/search.py index --exported exported/ [--exported-format onnx] --gallery photos/ --out index.pt

The gallery is a folder of images and/or videos, or one video file; videos are sampled at
--sample-fps frames per second (0 = every frame) and each hit names its video, frame and time.
Every person the model detects in the gallery (score >= --score-thresh, by default the config's
TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH) is ranked by the cosine similarity of its embedding to the
query box's embedding. The top-k is written as OUT/topk.json and OUT/topk.png.
"""
import argparse
import os

import galw  # noqa: F401  (before detectron2: compat and registrations)
from galw.engine import setup_logging
from galw.export import FORMATS
from galw.search import answer_query, build_index, load_index, load_search_model, model_source, save_index
from galw.search import ExportedSearchModel, SearchModel, list_gallery  # noqa: F401  (names of the tool's module)


def _add_model_args(p):
    p.add_argument("--config-file", help="the model's config (with --weights)")
    p.add_argument("--weights", help="trained weights (.pth)")
    p.add_argument("--exported", help="instead of both: a folder written by tools/export.py")
    p.add_argument("--exported-format", choices=list(FORMATS),
                   help="with --exported: the programs to run (default: the export's first format; for `query`, "
                        "the index's)")


def _search_model(args, stored=None):
    """The model the command names: --exported, or --config-file + --weights (each defaulting to
    what the index stored, for `query`)."""
    try:
        source = model_source(args.config_file, args.weights, args.opts, args.exported, args.exported_format, stored)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return load_search_model(source)


def _add_gallery_args(p):
    p.add_argument("--gallery", required=True, help="folder of images and/or videos, or one video file")
    p.add_argument("--sample-fps", type=float, default=1.0,
                   help="video frames taken into the gallery per second of video (0 = every frame)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="keep gallery detections with score >= this (default: the config's "
                        "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH)")


def _add_query_args(p):
    p.add_argument("--query-image", required=True)
    p.add_argument("--box", required=True, nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"))
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder for topk.json and topk.png")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_search = sub.add_parser("search", help="index a gallery folder in memory and answer one query")
    _add_model_args(p_search)
    _add_gallery_args(p_search)
    _add_query_args(p_search)
    p_index = sub.add_parser("index", help="detect and embed every person of a gallery folder, save to disk")
    _add_model_args(p_index)
    _add_gallery_args(p_index)
    p_index.add_argument("--out", required=True, help="index file to write (e.g. index.pt)")
    p_query = sub.add_parser("query", help="answer a query against a saved index")
    p_query.add_argument("--index", required=True)
    _add_model_args(p_query)
    _add_query_args(p_query)
    for p in (p_search, p_index, p_query):
        p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()

    if args.command == "query":
        index = load_index(args.index)
        model = _search_model(args, index)
        result = answer_query(model, index, args.query_image, args.box, args.topk, args.out, args.index)
    else:
        model = _search_model(args)
        index = build_index(model, args.gallery, args.score_thresh, args.sample_fps)
        if args.command == "index":
            save_index(index, args.out)
            print(f"indexed {index['embeddings'].shape[0]} people in {len(index['images'])} images -> {args.out}")
            return index
        result = answer_query(model, index, args.query_image, args.box, args.topk, args.out)
    for hit in result["topk"]:
        where = f"frame {hit['frame']} at {hit['timestamp']}" if "frame" in hit else ""
        print(f"{hit['rank']:>3}  {hit['similarity']:.4f}  {hit['image']}  {where}  {hit['box']}")
    print(f"wrote {os.path.join(args.out, 'topk.json')}")
    return result


if __name__ == "__main__":
    main()
