#!/usr/bin/env python
"""Gradient, grouping, loss-weight and search figures of a run's output folder.

    python tools/plot_galw.py output/roi_alignps_galw [--out output/roi_alignps_galw/report]

Reads OUTPUT_DIR/galw_groups.json, metrics.json and inference/search_*.json (whichever
exist) and writes the figures plus summary.json; prints which figures were skipped and why.
"""
import argparse
import os

from galw.engine import setup_logging
from galw.visualization import write_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run's OUTPUT_DIR")
    parser.add_argument("--out", help="report folder (default: RUN_DIR/report)")
    parser.add_argument("--num-queries", type=int, default=4, help="queries in the search picture")
    parser.add_argument("--topk", type=int, default=5, help="gallery crops per query in the search picture")
    args = parser.parse_args(argv)
    setup_logging()
    out = args.out or os.path.join(args.run_dir, "report")
    summary = write_report(args.run_dir, out, num_queries=args.num_queries, topk=args.topk)
    for name, rel in sorted(summary["figures"].items()):
        print(f"wrote {name}: {os.path.join(out, rel)}")
    for name, reason in sorted(summary["skipped"].items()):
        print(f"skipped {name}: {reason}")
    print(f"summary: {os.path.join(out, 'summary.json')}")
    return summary


if __name__ == "__main__":
    main()
