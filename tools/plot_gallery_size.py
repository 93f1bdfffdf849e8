#!/usr/bin/env python
"""CUHK-SYSU mAP against gallery size for several runs (the paper's Fig. 4).

    python tools/plot_gallery_size.py RUN1/inference/search_cuhk_sysu_gallery.json \\
        RUN2/inference/search_cuhk_sysu_gallery.json --labels "ROI-AlignPS*" "+ GALW" --out fig4.png

Each input is an evaluator search JSON (its "metrics") or a run's metrics.json (its last
line with search_TestG<N> values). Prints the plotted points as a table.
"""
import argparse
import json
import os

from galw.visualization import gallery_size_metrics, load_metrics_records, plot_gallery_size_curve


def load_points(path, metric):
    """[(gallery size, value)] from a search JSON or a metrics.json."""
    if os.path.basename(path) == "metrics.json":
        records = load_metrics_records(path)
        for rec in reversed(records):
            try:
                return gallery_size_metrics(rec, metric, source=path)
            except ValueError:
                continue
        raise ValueError(f"{path}: no line with search_TestG<N>/{metric} values")
    with open(path) as f:
        data = json.load(f)
    if "metrics" not in data:
        raise ValueError(f"{path}: no field 'metrics'; expected an evaluator search_<gallery>.json")
    return gallery_size_metrics(data["metrics"], metric, source=path)


def default_label(path):
    """The run folder's name: RUN/inference/search_x.json -> RUN, RUN/metrics.json -> RUN."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.basename(parent) == "inference":
        parent = os.path.dirname(parent)
    return os.path.basename(parent)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="search_<gallery>.json or metrics.json, one per run")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per input (default: run folder names)")
    parser.add_argument("--metric", default="mAP", choices=["mAP", "top1", "top5", "top10"])
    parser.add_argument("--out", default="fig4_gallery_size.png", help="output image")
    args = parser.parse_args(argv)
    labels = args.labels or [default_label(p) for p in args.inputs]
    if len(labels) != len(args.inputs):
        parser.error(f"--labels has {len(labels)} entries for {len(args.inputs)} inputs")
    runs = [(label, load_points(path, args.metric)) for label, path in zip(labels, args.inputs)]
    drawn = plot_gallery_size_curve(runs, args.out, metric=args.metric)
    sizes = sorted({n for pts in drawn.values() for n, _ in pts})
    print("| run | " + " | ".join(f"G{n}" for n in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for label, pts in drawn.items():
        values = dict(pts)
        print(f"| {label} | " + " | ".join(f"{values[n]:.2f}" if n in values else "-" for n in sizes) + " |")
    print(f"wrote {args.out}")
    return drawn


if __name__ == "__main__":
    main()
