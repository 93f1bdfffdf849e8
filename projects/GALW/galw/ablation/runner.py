"""Running the planned trainings: one subprocess each, resumable through the runs' result files.

A run whose result file exists is not trained again, so a study can be completed over several
invocations; failed runs are reported and retried on the next one.
"""
import logging
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from .regroup import galw_group_tasks, regroup_from_run
from .run_result import RESULT_FILE, result_data, save_result, saved_result
from .spec import REPO_ROOT, base_config_path, plan_runs, train_command

__all__ = ["dry_run_commands", "finished_runs", "run_ablation", "run_one", "subprocess_runner"]

logger = logging.getLogger(__name__)


def subprocess_runner(cmd, out_dir, threads=None):
    """Run one training; its output goes to ``OUT_DIR/ablation_log.txt``. Returns the exit code.

    ``threads``: OMP/MKL thread count of the run (parallel CPU runs share the cores).
    """
    os.makedirs(out_dir, exist_ok=True)
    env = None
    if threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(os.path.join(out_dir, "ablation_log.txt"), "a") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)


def run_one(spec, run, tag, runner, extra_args=(), group_tasks=galw_group_tasks, done=()):
    """One planned run, skipped when its result file exists: (result data, None) or (None, failure).

    ``done``: the (variant, seed) pairs finished so far, which a ``groups_from`` source must be in.
    """
    src = run["groups_from"]

    def failure(reason, where=""):
        logger.error("%s: %s%s", tag, reason, where)
        return None, {"name": run["name"], "seed": run["seed"], "reason": reason}

    saved = saved_result(run)
    if saved is not None:
        logger.info("%s: done before, reusing %s", tag, os.path.join(run["out_dir"], RESULT_FILE))
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
        data = result_data(run, time.time() - start)
    except ValueError as e:
        return failure(str(e))
    save_result(run, data, cmd)
    logger.info("%s: mAP %.2f, top-1 %.2f in %.0f s", tag, data["mAP"], data["top1"], data["seconds"])
    return data, None


def finished_runs(spec, out_root, only=None, seeds=None):
    """{"results", "failed": [], "not_run"} from the result files of the planned runs; trains nothing."""
    results, not_run = [], []
    for run in plan_runs(spec, out_root, only, seeds):
        saved = saved_result(run)
        if saved is not None:
            results.append(saved)
        else:
            not_run.append({"name": run["name"], "seed": run["seed"]})
    return {"results": results, "failed": [], "not_run": not_run}


def dry_run_commands(spec, out_root, only=None, seeds=None, extra_args=()):
    """The command line of every planned run (a ``groups_from`` run's groups file named by its source)."""
    commands = []
    for run in plan_runs(spec, out_root, only, seeds):
        src = run["groups_from"]
        extra = ["MODEL.GALW.GROUPS_FILE", "<regrouped from " + src["groups_file"] + ">"] if src else []
        commands.append(train_command(spec, run, extra_args=extra_args, extra_opts=extra))
    return commands


def run_ablation(spec, out_root, runner=subprocess_runner, only=None, seeds=None, extra_args=(),
                 group_tasks=galw_group_tasks, jobs=1):
    """Run every planned run not already done; returns {"results": [...], "failed": [...]} in plan order.

    ``jobs`` > 1 runs the seeds' chains concurrently (a chain is one seed's runs in spec order,
    so a ``groups_from`` source always finishes before the runs that regroup it).
    """
    runs = plan_runs(spec, out_root, only, seeds)
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
            result, failure = run_one(spec, run, tag, runner, extra_args, group_tasks, done)
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
