#!/usr/bin/env python
"""Run the loss-weighting / grouping ablations (the paper's Tables 1-5) and tabulate them.

    python tools/ablation.py --spec tools/ablation_spec.yaml --out output/ablation
    python tools/ablation.py ... --only equal galw_g4 --seeds 1 2     # a subset
    python tools/ablation.py ... --dry-run                              # print the commands
    python tools/ablation.py ... --max-iter 100 --opts MODEL.GALW.EPOCH_ITERS 25   # reduced scale
    python tools/ablation.py ... --jobs 2                               # two seeds at a time
    python tools/ablation.py ... --table-only                           # tabulate what has finished

Runs train_net.py once per (variant, seed), each in OUT/<variant>/seed<k>; one seed's runs go in
spec order, and --jobs N runs N seeds side by side.
A variant with ``groups_from`` reuses the Gamma history and initial weights of an earlier
variant's first GALW training (one Algorithm-1 probe per seed for G = 2..6). Resumable:
a run whose ablation_result.json exists is not run again. Writes OUT/ablation.md (mean and
sample std of search mAP, top-1, top-10 and detection AP per variant, and each variant against
``equal`` and ``galw_g4``: difference, Welch's p, whether the seed ranges are apart) and OUT/ablation.json.
"""
import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import yaml

logger = logging.getLogger("galw.ablation")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FILE = "ablation_result.json"


# ---------------------------------------------------------------- the spec
def load_spec(path):
    """The ablation spec YAML (see tools/ablation_spec.yaml), validated."""
    with open(path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with base_config, seeds, variants")
    for key in ("base_config", "seeds", "variants"):
        if key not in spec:
            raise ValueError(f"{path}: missing field {key!r}")
    spec.setdefault("common_opts", [])
    if not spec["seeds"] or not all(isinstance(s, int) for s in spec["seeds"]):
        raise ValueError(f"{path}: 'seeds' must be a non-empty list of integers, got {spec['seeds']}")
    seen = []
    for i, v in enumerate(spec["variants"]):
        if not isinstance(v, dict) or "name" not in v or "opts" not in v:
            raise ValueError(f"{path}: variants[{i}] needs 'name' and 'opts'")
        if v["name"] in seen:
            raise ValueError(f"{path}: duplicate variant name {v['name']!r}")
        if len(v["opts"]) % 2:
            raise ValueError(f"{path}: variant {v['name']!r} has an odd number of opts (KEY VALUE pairs)")
        v.setdefault("tables", [])
        src = v.get("groups_from")
        if src is not None:
            missing = [k for k in ("variant", "groups_file", "num_groups") if k not in src]
            if missing:
                raise ValueError(f"{path}: variant {v['name']!r}: groups_from needs {missing}")
            if src["variant"] not in seen:
                raise ValueError(f"{path}: variant {v['name']!r}: groups_from.variant {src['variant']!r} "
                                 "must be a variant listed before it")
        seen.append(v["name"])
    spec["_path"] = path
    return spec


def _variant(spec, name):
    return next(v for v in spec["variants"] if v["name"] == name)


def plan_runs(spec, out_root, only=None, seeds=None):
    """The ordered runs: per seed, the variants in spec order (with --only, plus their groups_from sources)."""
    out_root = os.path.abspath(out_root)
    names = [v["name"] for v in spec["variants"]]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"{spec['_path']}: no variant(s) named {unknown}")
        wanted = set(only)
        for v in reversed(spec["variants"]):  # sources come earlier in the list
            if v["name"] in wanted and v.get("groups_from"):
                wanted.add(v["groups_from"]["variant"])
        names = [n for n in names if n in wanted]
    seeds = list(seeds) if seeds else list(spec["seeds"])
    runs = []
    for seed in seeds:
        for name in names:
            v = _variant(spec, name)
            run = {"name": name, "seed": seed, "out_dir": os.path.join(out_root, name, f"seed{seed}"),
                   "opts": [str(o).replace("{seed}", str(seed)) for o in v["opts"]], "groups_from": None}
            src = v.get("groups_from")
            if src:
                src_dir = os.path.join(out_root, src["variant"], f"seed{seed}")
                run["groups_from"] = {
                    "variant": src["variant"],
                    "groups_file": os.path.join(src_dir, src["groups_file"]),
                    "num_groups": int(src["num_groups"]),
                    "init_weights": os.path.join(src_dir, src["init_weights"]) if src.get("init_weights") else None,
                }
            runs.append(run)
    return runs


def base_config_path(spec):
    """The base config; a relative path is relative to the repository root."""
    return spec["base_config"] if os.path.isabs(spec["base_config"]) else os.path.join(ROOT, spec["base_config"])


def train_command(spec, run, python=sys.executable, extra_args=(), extra_opts=()):
    """The train_net.py command line of one run."""
    return [python, os.path.join(ROOT, "train_net.py"), "--config-file", base_config_path(spec), *extra_args,
            "OUTPUT_DIR", run["out_dir"], "SEED", str(run["seed"]),
            *[str(o) for o in spec["common_opts"]], *run["opts"], *extra_opts]


def schedule_opts(spec, max_iter):
    """Overrides that shorten the base config's schedule to ``max_iter`` iterations, its LR
    steps scaled by the same factor (a reduced-scale ablation keeps the schedule's shape)."""
    from galw import add_galw_config  # before detectron2 (galw closes its gaps)
    from detectron2.config import get_cfg

    if max_iter < 1:
        raise ValueError(f"--max-iter must be >= 1, got {max_iter}")
    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.merge_from_file(base_config_path(spec))
    cfg.merge_from_list([str(o) for o in spec["common_opts"]])
    steps = tuple(int(round(s * max_iter / cfg.SOLVER.MAX_ITER)) for s in cfg.SOLVER.STEPS)
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, max_iter))]


def galw_group_tasks(history, num_groups, linkage):
    """GALW's clustering of Gamma histories (galw_core.grouping.group_tasks, docs/galw.md)."""
    from galw_core.grouping import group_tasks

    return group_tasks(history, num_groups, linkage=linkage)


def regroup_from_run(src, out_dir, group_tasks=galw_group_tasks):
    """Groups for G = src["num_groups"] from another run's recorded Gamma history (Algorithm 1's
    first training is shared by the G = 2..6 variants of one seed, as in the paper's Table 4).

    Writes OUT_DIR/galw_groups_input.json (galw_groups.json format) and returns the config
    overrides that train with those groups from the source run's initial weights.
    """
    if not os.path.isfile(src["groups_file"]):
        raise FileNotFoundError(f"groups_from: {src['groups_file']} not found (did {src['variant']} finish?)")
    with open(src["groups_file"]) as f:
        probe = json.load(f)
    for key in ("gamma_history", "linkage"):
        if key not in probe:
            raise ValueError(f"{src['groups_file']}: missing field {key!r}")
    regrouped = dict(probe, groups=group_tasks(probe["gamma_history"], src["num_groups"], probe["linkage"]),
                     num_groups=src["num_groups"], source=src["groups_file"])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "galw_groups_input.json")
    _save_json(path, regrouped)
    opts = ["MODEL.GALW.GROUPS_FILE", path]
    if src["init_weights"]:
        if not os.path.isfile(src["init_weights"]):
            raise FileNotFoundError(f"groups_from: initial weights {src['init_weights']} not found")
        opts += ["MODEL.WEIGHTS", src["init_weights"]]
    return opts


# ---------------------------------------------------------------- running
def subprocess_runner(cmd, out_dir, threads=None):
    """Run one training; its output goes to OUT_DIR/ablation_log.txt. Returns the exit code.

    ``threads``: OMP/MKL thread count of the run (parallel CPU runs share the cores).
    """
    os.makedirs(out_dir, exist_ok=True)
    env = None
    if threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(os.path.join(out_dir, "ablation_log.txt"), "a") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


#: A result's metrics: (key, detectron2 "<task>/<metric>" name); mAP and top-1 are required.
METRICS = (("mAP", "search/mAP"), ("top1", "search/top1"), ("top10", "search/top10"), ("det_AP", "detection/AP"))


def _pick(flat, suffix):
    for key, value in flat.items():
        if key == suffix or key.endswith("/" + suffix):
            return float(value)
    return None


def _metrics_of(flat, source):
    """METRICS found in a flat {"<task>/<metric>": value} record, or None without mAP and top-1."""
    found = {key: _pick(flat, name) for key, name in METRICS}
    if found["mAP"] is None or found["top1"] is None:
        return None
    return dict({k: v for k, v in found.items() if v is not None}, source=source)


def collect_metrics(out_dir):
    """METRICS (and "source") of a finished run: its search JSON, else metrics.json's last eval line."""
    inf = os.path.join(out_dir, "inference")
    searches = sorted(f for f in os.listdir(inf) if f.startswith("search_") and f.endswith(".json")) \
        if os.path.isdir(inf) else []
    if len(searches) > 1:
        raise ValueError(f"{inf}: several search JSONs {searches}; the ablation expects one test set")
    if searches:
        path = os.path.join(inf, searches[0])
        with open(path) as f:
            metrics = json.load(f).get("metrics", {})
        flat = {f"{task}/{name}": value for task, values in metrics.items() if isinstance(values, dict)
                for name, value in values.items()}
        got = _metrics_of(flat, path)
        if got is None:
            raise ValueError(f"{path}: expected metrics.search.mAP and metrics.search.top1")
        return got
    path = os.path.join(out_dir, "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        for rec in reversed(lines):
            got = _metrics_of(rec, path)
            if got is not None:
                return got
    raise ValueError(f"{out_dir}: no inference/search_*.json and no search/mAP, search/top1 line in metrics.json")


def _save_json(path, obj):
    """``obj`` as indented JSON in ``path``, complete or absent (a crash mid-write must not leave a
    file that the resume cannot parse)."""
    from galw_core.files import atomic_write

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(obj, text, indent=2)
        text.detach()  # flushed; ``f`` stays open for atomic_write's sync

    atomic_write(path, write)


def _save_text(path, text):
    """``text`` in ``path``, complete or absent."""
    from galw_core.files import atomic_write

    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _result_path(run):
    return os.path.join(run["out_dir"], RESULT_FILE)


def saved_result(run):
    """The result file a finished run left in its folder, or None."""
    path = _result_path(run)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _run_one(spec, run, tag, runner, extra_args, group_tasks, done):
    """One planned run (reused when its result file exists): (result, None) or (None, failure)."""
    src = run["groups_from"]

    def failure(reason, where=""):
        logger.error("%s: %s%s", tag, reason, where)
        return None, {"name": run["name"], "seed": run["seed"], "reason": reason}

    saved = saved_result(run)
    if saved is not None:
        logger.info("%s: done before, reusing %s", tag, _result_path(run))
        return saved, None
    if src and (src["variant"], run["seed"]) not in done:
        return failure(f"groups_from run {src['variant']} did not finish")
    try:
        extra = regroup_from_run(src, run["out_dir"], group_tasks) if src else []
    except (OSError, ValueError) as e:
        return failure(str(e))
    cmd = train_command(spec, run, extra_args=extra_args, extra_opts=extra)
    logger.info("%s: running -> %s", tag, run["out_dir"])
    start = time.time()
    code = runner(cmd, run["out_dir"])
    if code != 0:
        return failure(f"exit code {code}", f" (train_net.py log in {run['out_dir']}/ablation_log.txt)")
    try:
        metrics = collect_metrics(run["out_dir"])
    except ValueError as e:
        return failure(str(e))
    result = {"name": run["name"], "seed": run["seed"], "command": cmd,
              "seconds": round(time.time() - start, 1), **metrics}
    _save_json(_result_path(run), result)
    logger.info("%s: mAP %.2f, top-1 %.2f in %.0f s", tag, result["mAP"], result["top1"], result["seconds"])
    return result, None


def finished_runs(spec, out_root, only=None, seeds=None):
    """{"results", "failed": [], "not_run"} from the result files of the planned runs; runs nothing."""
    results, not_run = [], []
    for run in plan_runs(spec, out_root, only, seeds):
        saved = saved_result(run)
        if saved is not None:
            results.append(saved)
        else:
            not_run.append({"name": run["name"], "seed": run["seed"]})
    return {"results": results, "failed": [], "not_run": not_run}


def run_ablation(spec, out_root, runner=subprocess_runner, only=None, seeds=None, extra_args=(), dry_run=False,
                 group_tasks=galw_group_tasks, jobs=1):
    """Run every planned run not already done; returns {"results": [...], "failed": [...]} in plan order.

    ``jobs`` > 1 runs the seeds' chains concurrently (a chain is one seed's runs in spec order,
    so a ``groups_from`` source always finishes before the runs that regroup it).
    """
    runs = plan_runs(spec, out_root, only, seeds)
    if dry_run:
        for run in runs:
            src = run["groups_from"]
            extra = ["MODEL.GALW.GROUPS_FILE", "<regrouped from " + src["groups_file"] + ">"] if src else []
            print(" ".join(train_command(spec, run, extra_args=extra_args, extra_opts=extra)))
        return {"results": [], "failed": []}
    if not os.path.isfile(base_config_path(spec)):
        raise FileNotFoundError(f"{spec['_path']}: base_config {spec['base_config']!r} does not exist")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    chains = {}
    for i, run in enumerate(runs, 1):
        chains.setdefault(run["seed"], []).append((f"[{i}/{len(runs)}] {run['name']} seed {run['seed']}", run))

    def run_chain(chain):
        results, failed, done = [], [], set()
        for tag, run in chain:
            result, failure = _run_one(spec, run, tag, runner, extra_args, group_tasks, done)
            if failure:
                failed.append(failure)
                continue
            done.add((run["name"], run["seed"]))
            results.append(result)
        return results, failed

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(run_chain, chains.values()))
    results = [r for chain_results, _ in outcomes for r in chain_results]
    failed = [f for _, chain_failed in outcomes for f in chain_failed]
    if failed:
        logger.warning("%d run(s) failed or were skipped: %s", len(failed),
                       ", ".join(f"{f['name']}/seed{f['seed']}" for f in failed))
    return {"results": results, "failed": failed}


# ---------------------------------------------------------------- the table
def mean_std(values):
    """(mean, sample standard deviation with ddof=1, or None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


#: Columns of the table: (result key, header); top-10 and detection AP only when every run has them.
COLUMNS = (("mAP", "mAP (%)"), ("top1", "top-1 (%)"), ("top10", "top-10 (%)"), ("det_AP", "detection AP (%)"))


def aggregate(spec, results):
    """Per variant in spec order: runs, seeds, per-run values, mean and std of every column it has."""
    rows = []
    for v in spec["variants"]:
        mine = sorted((r for r in results if r["name"] == v["name"]), key=lambda r: r["seed"])
        if not mine:
            continue
        row = {"name": v["name"], "tables": v["tables"], "runs": len(mine), "seeds": [r["seed"] for r in mine]}
        for key, _ in COLUMNS:
            values = [r.get(key) for r in mine]
            if any(x is None for x in values):
                continue
            row[key] = values
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        rows.append(row)
    return rows


def _cell(mean, std):
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows):
    columns = [(k, h) for k, h in COLUMNS if any(f"{k}_mean" in r for r in rows)]
    lines = ["| variant | paper tables | runs | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r[f"{k}_mean"], r[f"{k}_std"]) if f"{k}_mean" in r else "n/a" for k, _ in columns]
        lines.append(f"| {r['name']} | {', '.join(r['tables'])} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Variants the others are compared with, when present: the plain sum and the paper's GALW.
REFERENCES = ("equal", "galw_g4")


def compare(rows, reference, keys=("mAP", "top1")):
    """Per variant other than ``reference`` (both with 2+ runs): for each of ``keys`` the difference of
    means, Welch's t-test p-value and whether the two seed ranges are apart (every run of one
    above every run of the other): the differences that exceed the seed-to-seed spread."""
    from scipy.stats import ttest_ind

    ref = next((r for r in rows if r["name"] == reference), None)
    if ref is None or ref["runs"] < 2:
        return []
    out = []
    for r in rows:
        if r["name"] == reference or r["runs"] < 2:
            continue
        cmp = {"name": r["name"], "reference": reference}
        for key in keys:
            if key not in r or key not in ref:
                continue
            a, b = r[key], ref[key]
            p = float(ttest_ind(a, b, equal_var=False).pvalue)
            cmp[key] = {"diff": r[f"{key}_mean"] - ref[f"{key}_mean"], "welch_p": p,
                        "apart": bool(min(a) > max(b) or max(a) < min(b))}
        out.append(cmp)
    return out


def all_comparisons(rows):
    """``compare`` against each of REFERENCES, each pair once (galw_g4 against equal, not also the reverse)."""
    out = []
    for ref in REFERENCES:
        done = {(c["name"], c["reference"]) for c in out}
        out += [c for c in compare(rows, ref) if (ref, c["name"]) not in done]
    return out


def comparison_table(comparisons):
    keys = [k for k, _ in COLUMNS if any(k in c for c in comparisons)]
    header = {k: h.replace(" (%)", "") for k, h in COLUMNS}
    lines = ["| variant | vs | " + " | ".join(f"Δ {header[k]} | Welch p | seed ranges apart" for k in keys) + " |",
             "|---|---|" + "---|---|---|" * len(keys)]
    for c in comparisons:
        cells = []
        for k in keys:
            d = c.get(k)
            cells += ["n/a"] * 3 if d is None else [f"{d['diff']:+.2f}", f"{d['welch_p']:.2g}",
                                                    "**yes**" if d["apart"] else "no"]
        lines.append(f"| {c['name']} | {c['reference']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(spec, outcome, out_root):
    rows = aggregate(spec, outcome["results"])
    os.makedirs(out_root, exist_ok=True)
    note = ("Mean ± sample standard deviation (ddof=1) over seeds; a single run shows its value only.\n")
    if outcome["failed"]:
        note += f"Failed or skipped runs (not in the table): {len(outcome['failed'])}, see ablation.json.\n"
    if outcome.get("not_run"):
        note += (f"Not run (yet): {len(outcome['not_run'])}: "
                 + ", ".join(f"{r['name']}/seed{r['seed']}" for r in outcome["not_run"]) + ".\n")
    comparisons = all_comparisons(rows)
    md = f"# Ablation: {spec['_path']}\n\nBase config: `{spec['base_config']}`\n\n"
    if spec["common_opts"]:
        md += f"Common overrides: `{' '.join(str(o) for o in spec['common_opts'])}`\n\n"
    md += markdown_table(rows) + "\n" + note
    if comparisons:
        md += ("\nDifferences of means; Welch's t-test over the seeds; \"apart\": every run of one variant "
               "above every run of the other (a difference beyond the seed-to-seed spread).\n\n"
               + comparison_table(comparisons))
    _save_text(os.path.join(out_root, "ablation.md"), md)
    _save_json(os.path.join(out_root, "ablation.json"),
               {"spec": spec["_path"], "base_config": spec["base_config"], "variants": rows,
                "runs": outcome["results"], "failed": outcome["failed"],
                "not_run": outcome.get("not_run", []), "comparisons": comparisons})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=os.path.join(ROOT, "tools", "ablation_spec.yaml"))
    parser.add_argument("--out", default="output/ablation", help="root folder of all runs and the tables")
    parser.add_argument("--only", nargs="+", help="variant names to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the spec's seeds")
    parser.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run concurrently (each seed's variants stay in order), each with "
                        "cpu_count/jobs threads")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--table-only", action="store_true",
                        help="tabulate the runs already finished under --out (while others run), train nothing")
    parser.add_argument("--max-iter", type=int, help="reduced scale: SOLVER.MAX_ITER of every run (LR steps "
                        "scaled alike); use a fresh --out, finished runs are reused by folder")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for every run, appended to the spec's common_opts "
                        "(a variant's own opts still win)")
    args = parser.parse_args(argv)
    from galw.engine import setup_logging  # here: --help and argument errors stay instant

    setup_logging()
    spec = load_spec(args.spec)
    if len(args.opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {args.opts}")
    if args.max_iter is not None:
        spec["common_opts"] = list(spec["common_opts"]) + schedule_opts(spec, args.max_iter)
    spec["common_opts"] = list(spec["common_opts"]) + list(args.opts)
    extra = ["--num-gpus", str(args.num_gpus)] if args.num_gpus != 1 else []
    runner = subprocess_runner
    if args.jobs > 1:  # the CPU's cores shared out between the concurrent runs
        runner = partial(subprocess_runner, threads=max(1, (os.cpu_count() or 1) // args.jobs))
    if args.table_only:
        outcome = finished_runs(spec, args.out, only=args.only, seeds=args.seeds)
    else:
        outcome = run_ablation(spec, args.out, runner=runner, only=args.only, seeds=args.seeds, extra_args=extra,
                               dry_run=args.dry_run, jobs=args.jobs)
    if args.dry_run:
        return outcome
    rows = write_tables(spec, outcome, args.out)
    print(markdown_table(rows))
    print(f"wrote {os.path.join(args.out, 'ablation.md')} and ablation.json")
    return outcome


if __name__ == "__main__":
    main()
