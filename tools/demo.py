#!/usr/bin/env python
"""The first command to run: GALW end to end on the synthetic benchmark, on CPU (`make demo`).

Stages: (1) write SynthPS-PRW (reused when its stamp says same seed and size), (2) evaluate an
UNTRAINED ROI-AlignPS* (random init): the floor, (3) evaluate a hand-crafted baseline through the
same evaluator, GT boxes as detections and HSV colour histograms of torso and legs as embeddings
(galw.evaluation.colour_baseline): a gauge of how hard the gallery is for appearance alone,
(4) train ROI-AlignPS* (R-18) with GALW, both trainings of Algorithm 1 through
galw.engine.Trainer (phase one records Gamma and groups the 10 tasks, phase two trains from the
same initial weights with RULWF per group; its config.yaml beside the weights) and evaluate it on
the synthetic gallery, (5) write the report folder (Fig. 3 gradient curves, s* dendrogram and
groups, sigma/weight curves, top-k search pictures, similarity of true matches vs other people
per model) and a summary that puts the trained model's mAP / top-1 between the untrained model's
and the colour baseline's; the headline figures go to results/demo/<size>_seed<seed>.json.
The pipeline is the package's ``galw.demo`` (docs/demo.md).

    python tools/demo.py [--out output/demo] [--report DIR] [--size default] [--seed 0] [KEY VALUE ...]
"""
import argparse

import galw  # noqa: F401  (before any detectron2 import)
from galw.data.synthetic import SIZES
from galw.demo import DEFAULT_CONFIG, run_demo


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/demo", help="demo folder (runs: untrained/, galw/)")
    parser.add_argument("--report", default=None, help="report folder (default OUT/report)")
    parser.add_argument("--data-root", default=None, help="SynthPS-PRW root (default $DETECTRON2_DATASETS/SynthPS-PRW)")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="SynthPS size")
    parser.add_argument("--seed", type=int, default=0,
                        help="dataset seed, and training seed unless the overrides set SEED")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--num-queries", type=int, default=4, help="queries in the search pictures")
    parser.add_argument("--topk", type=int, default=5, help="gallery matches per query in the pictures")
    parser.add_argument("--results-root", default=None,
                        help="folder of the headline result file (default: the repository's results/)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_demo(args.out, args.report, args.data_root, args.size, args.seed, args.config_file, args.opts,
                    args.num_queries, args.topk, results_root=args.results_root)


if __name__ == "__main__":
    main()
