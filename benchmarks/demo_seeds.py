#!/usr/bin/env python
"""The demo's recipe over several training seeds on one SynthPS-PRW dataset, beside the gauge.

    PYTHONPATH=projects/GALW:. python benchmarks/demo_seeds.py [--size default] [--data-seed 0] \
        [--seeds 0 1 2] [--out output/demo_seeds] [KEY VALUE ...]

Each training seed runs the whole demo (galw.demo.run_demo: untrained floor, colour-histogram
gauge, both GALW trainings, evaluation) with ``SEED <seed>``; a run's headline figures are kept in
``OUT/data<D>_seed<S>.json`` and a run whose file exists (same config overrides) is skipped, so the
benchmark can be completed over several sittings; each row names the commit its run trained at.
The table (min / median / max of the trained model's search mAP and top-1 next to the gauge's,
which depends on the dataset only) goes to
``results/benchmarks/demo_seeds_<size>_data<D>.json``. ``--data-seed`` other than the demo's 0 is the
held-out check: the same recipe on SynthPS generated with another seed.
"""
import argparse
import json
import os
import statistics
import tempfile

import galw  # noqa: F401  (before detectron2)
from galw.data.synthetic import SIZES
from galw.demo import DEFAULT_CONFIG, ROW_BASELINE, ROW_TRAINED, run_demo
from galw.results import git_commit
from galw_core.files import atomic_write
from result_file import save


def run_seed(out, size, data_seed, seed, config_file, opts):
    """One demo run's headline figures, from ``OUT/data<D>_seed<S>.json`` when it holds this run."""
    path = os.path.join(out, f"data{data_seed}_seed{seed}.json")
    want = {"size": size, "data_seed": data_seed, "seed": seed, "config_file": os.path.relpath(config_file),
            "opts": list(opts)}
    if os.path.isfile(path):
        with open(path) as f:
            done = json.load(f)
        if done["run"] == want:
            print(f"seed {seed}: kept from {path}", flush=True)
            return done
    commit = git_commit()  # the code the run trains with (a commit made meanwhile is not)
    with tempfile.TemporaryDirectory() as results_root:
        summary = run_demo(out=os.path.join(out, f"data{data_seed}_seed{seed}"),
                           data_root=os.path.join(out, f"data{data_seed}"), size=size, seed=data_seed,
                           config_file=config_file, opts=["SEED", str(seed)] + list(opts), results_root=results_root)
    results = summary["results"]
    done = {"run": want, "wall_time_s": round(summary["wall_time_s"], 1), "commit": commit,
            "trained": results[ROW_TRAINED], "gauge": results[ROW_BASELINE]}
    atomic_write(path, lambda f: f.write(json.dumps(done, indent=1).encode("utf-8")))
    return done


def seed_table(runs):
    """{rows: one per seed, summary: min / median / max of the trained model next to the gauge}."""
    rows = [{"seed": r["run"]["seed"], "mAP": round(r["trained"]["mAP"], 2), "top-1": round(r["trained"]["top1"], 2),
             "gauge mAP": round(r["gauge"]["mAP"], 2), "gauge top-1": round(r["gauge"]["top1"], 2),
             "wall time (s)": r["wall_time_s"], "commit": r.get("commit", "not recorded")} for r in runs]
    summary = []
    for metric, gauge_key in (("mAP", "gauge mAP"), ("top-1", "gauge top-1")):
        values = [row[metric] for row in rows]
        gauge = statistics.median(row[gauge_key] for row in rows)
        median = statistics.median(values)
        summary.append({"metric": metric, "min": min(values), "median": median, "max": max(values), "gauge": gauge,
                        "median - gauge": round(median - gauge, 2)})
    return {"rows": rows, "summary": summary}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="output/demo_seeds")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... for every run")
    args = parser.parse_args()
    runs = [run_seed(args.out, args.size, args.data_seed, s, args.config_file, args.opts) for s in args.seeds]
    table = seed_table(runs)
    print(f"{'metric':<8s} {'min':>7s} {'median':>7s} {'max':>7s} {'gauge':>7s}")
    for row in table["summary"]:
        print(f"{row['metric']:<8s} {row['min']:7.2f} {row['median']:7.2f} {row['max']:7.2f} {row['gauge']:7.2f}")
    table["settings"] = {"size": args.size, "data seed": args.data_seed, "seeds": args.seeds,
                         "config": os.path.relpath(args.config_file), "overrides": " ".join(args.opts) or "none"}
    save(f"demo_seeds_{args.size}_data{args.data_seed}", table)


if __name__ == "__main__":
    main()
