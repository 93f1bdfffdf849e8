#!/usr/bin/env python
"""Run the loss-weighting / grouping ablations (the paper's Tables 1-5) and tabulate them.

    python tools/ablation.py --spec tools/ablation_spec.yaml --out output/ablation
    python tools/ablation.py ... --only equal galw_g4 --seeds 1 2     # a subset
    python tools/ablation.py ... --dry-run                              # print the commands
    python tools/ablation.py ... --max-iter 100 --opts MODEL.GALW.EPOCH_ITERS 25   # reduced scale
    python tools/ablation.py ... --jobs 2                               # two runs at a time
    python tools/ablation.py ... --table-only                           # tabulate what has finished
    python tools/ablation.py ... --data data1                           # on SynthPS drawn with seed 1
    python tools/ablation.py --report                                   # report from results/ablation/

Runs train_net.py once per (variant, seed), each in OUT/<data>/<variant>/seed<k>, on the spec's
dataset <data> (SynthPS-PRW generated with its seed in OUT/<data>/datasets); a run that regroups
another's phase one follows it, the chains with the most runs left go first, and --jobs N trains N
side by side. A variant with ``groups_from`` reuses the
Gamma history and initial weights of an earlier variant's first GALW training; one with
``{tuned_weights}`` trains with the best static weights of the spec's search (run first, in
OUT/<data>/search, scored on a validation split of the training identities; a dataset with
``search_from`` takes the weights its source dataset's search chose). Resumable: a run
whose ablation_result.json exists is not run again; a copy goes to RESULTS/<data>/<variant>/
seed<k>.json. Writes OUT/<data>/ablation.md, ablation.json and figures: mean and sample std per
variant, paired differences against ``equal`` and ``tuned_static``, convergence over the last
20 % of each run. --report writes them into RESULTS/<data>/ from the copies alone.
The runner is the package's ``galw.ablation`` (docs/tools.md).
"""
import argparse
import os
from functools import partial

import galw  # noqa: F401  (before detectron2: compat and registrations)
from galw import ablation
from galw.ablation import base_config_path, load_spec, plan_runs  # noqa: F401  (names of the tool's module)
from galw.engine import setup_logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where the runs' result files are kept for committing (one folder per dataset).
RESULTS = os.path.join(ROOT, "results", "ablation")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=os.path.join(ROOT, "tools", "ablation_spec.yaml"))
    parser.add_argument("--out", default="output/ablation", help="root folder of all runs and the tables")
    parser.add_argument("--only", nargs="+", help="variant names to run (default: the dataset's variants, else all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the spec's seeds")
    parser.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained concurrently (a groups_from run after its source), each with "
                        "cpu_count/jobs threads")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--table-only", action="store_true",
                        help="tabulate the runs already finished under --out (while others run), train nothing")
    parser.add_argument("--data", help="the spec's dataset to run on (default: its first)")
    parser.add_argument("--results", help=f"keep each run's result file under RESULTS/<data>/ (default {RESULTS}; "
                        "none with --max-iter or --opts unless named)")
    parser.add_argument("--report", action="store_true",
                        help="tables, JSON and figures into RESULTS/<data>/ from the result files there; trains nothing")
    parser.add_argument("--max-iter", type=int, help="reduced scale: SOLVER.MAX_ITER of every run (LR steps "
                        "scaled alike); use a fresh --out, finished runs are reused by folder")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for every run, appended to the spec's common_opts "
                        "(a variant's own opts still win)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {args.opts}")
    setup_logging()
    spec = ablation.load_spec(args.spec)
    data = ablation.label_dataset(spec, args.data)
    only = args.only or data.get("variants")
    reduced = args.max_iter is not None or bool(args.opts)
    results = args.results or (None if reduced and not args.report else RESULTS)
    results_dir = os.path.join(results, data["name"]) if results else None
    out_root = os.path.join(args.out, data["name"])
    if args.max_iter is not None:
        spec["common_opts"] = list(spec["common_opts"]) + ablation.schedule_opts(spec, args.max_iter)
    spec["common_opts"] = list(spec["common_opts"]) + list(args.opts)
    extra = ["--num-gpus", str(args.num_gpus)] if args.num_gpus != 1 else []
    if results_dir:
        ablation.check_kept_draw(results_dir, data, create=not (args.dry_run or args.report or args.table_only))
    borrowed = ablation.borrowed_search(spec, data, args.out, results)
    if args.dry_run:
        for cmd in ablation.dry_run_commands(spec, out_root, only, args.seeds, extra_args=extra, search=borrowed):
            print(" ".join(cmd))
        return None
    tables_dir = out_root
    if args.report:
        outcome = ablation.committed_outcome(spec, data, results, only, args.seeds)
        tables_dir = results_dir
    elif args.table_only:
        outcome = ablation.finished_runs(spec, out_root, only=only, seeds=args.seeds, search=borrowed)
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None  # cores shared out
        runner = partial(ablation.subprocess_runner, threads=threads,
                         datasets_root=ablation.prepare_dataset(args.out, data))
        outcome = ablation.run_ablation(spec, out_root, runner=runner, only=only, seeds=args.seeds,
                                        extra_args=extra, jobs=args.jobs, results_dir=results_dir, search=borrowed)
    rows = ablation.write_tables(spec, outcome, tables_dir)
    print(ablation.markdown_table(rows))
    print(f"wrote {os.path.join(tables_dir, 'ablation.md')}, ablation.json and the figures")
    return outcome


if __name__ == "__main__":
    main()
