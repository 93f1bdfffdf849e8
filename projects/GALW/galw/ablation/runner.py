"""Running the planned trainings: one subprocess each, resumable through the runs' result files.

A run whose result file exists is not trained again, so a study can be completed over several
invocations; failed runs are reported and retried on the next one, and a training interrupted
part way continues from its last checkpoint (``train_net.py --resume``). A result file records the
overrides its run trained with (run_opts); one recorded with other overrides than the planned run's
(a changed search choice, schedule or spec) is an error naming the file and the values, never reused.
When a planned variant uses the search's weights (``{tuned_weights}``), the search's runs go first
(search.py) and its best vector is put into that variant's opts; until the search is complete such runs are reported as failed.
"""
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from galw_core.files import atomic_write
from galw_core.two_phase import PHASE_ONE_DIR

from ..checkpoint import LAST_CHECKPOINT, CheckpointError, remove_periodic_checkpoints
from ..results import git_commit
from .data import check_kept_draw, source_spec
from .process import run_threads, subprocess_runner
from .regroup import galw_group_tasks, regroup_from_run
from .run_result import RESULT_FILE, committed_result, keep_copy, result_data, save_result, saved_result
from .search import choose, plan_search, weights_text
from .spec import TUNED_WEIGHTS, base_config_path, config_fingerprint, plan_runs, train_command

__all__ = ["FINGERPRINT", "PLANNED_FILE", "borrowed_search", "check_result", "dry_run_commands", "finished_runs",
           "restore_phase_one", "resume_args", "reusable_result", "run_ablation", "run_one", "run_opts", "run_search"]

logger = logging.getLogger(__name__)

#: Written into a run's folder before it trains: the overrides it trains with (run_opts) and the
#: fingerprint of its config files (spec.config_fingerprint), so that a later invocation continues the
#: checkpoints left there by an interrupted training of the same run.
PLANNED_FILE = "ablation_planned.json"
#: The field of a result file and of PLANNED_FILE that holds spec.config_fingerprint.
FINGERPRINT = "base_config_sha256"


def run_opts(spec, run):
    """The overrides a run trains with and its result file records: the spec's common opts, then the
    run's own (placeholders resolved). Paths made from OUT (groups_from's files) are left out, so a
    moved OUT folder still matches."""
    return [*map(str, spec["common_opts"]), *map(str, run["opts"])]


def _differences(recorded, planned):
    trained = dict(zip(recorded[::2], recorded[1::2]))
    wanted = dict(zip(planned[::2], planned[1::2]))
    diffs = [f"{k}: trained {trained.get(k, '<not set>')}, planned {wanted.get(k, '<not set>')}"
             for k in dict.fromkeys([*trained, *wanted]) if trained.get(k) != wanted.get(k)]
    return "; ".join(diffs) or f"trained {recorded}, planned {planned}"


def check_result(spec, run, data, path):
    """``data`` (a result file's, at ``path``) when it records the planned run's overrides and the spec's
    config files; else an error naming the file and the values."""
    remove = "that kept copy and the run's folder" if path == run.get("result_copy") else "that run's folder"
    planned, recorded = run_opts(spec, run), data.get("opts")
    if recorded != planned:
        what = "records no opts" if recorded is None else \
            f"was trained with other opts than planned ({_differences(recorded, planned)})"
        raise ValueError(f"{path}: {what}; expected a result of opts {planned}. "
                         f"Remove {remove} to train it again with the planned opts")
    other = _other_configs(spec, data)
    if other:
        raise ValueError(f"{path}: was trained {other}. Remove {remove} to train it again from the spec's "
                         "config files")
    return data


def reusable_result(spec, run):
    """The result of ``run``: the file its folder holds (saved_result), else its kept copy (committed_result:
    a study continued in another checkout, where the run folders of earlier invocations are gone); None
    when neither exists; check_result's error when it is of other overrides or config files."""
    saved, path = saved_result(run), os.path.join(run["out_dir"], RESULT_FILE)
    if saved is None:
        saved, path = committed_result(run), run.get("result_copy")
    return None if saved is None else check_result(spec, run, saved, path)


def _read_checked(spec, run, read):
    """``read(run)`` (saved_result: the run's folder; committed_result: its kept copy) checked like a reused
    result (check_result); None when it has none."""
    data = read(run)
    if data is None:
        return None
    path = run["result_copy"] if read is committed_result else os.path.join(run["out_dir"], RESULT_FILE)
    return check_result(spec, run, data, path)


def _other_configs(spec, record):
    """Why ``record`` (a result's data or PLANNED_FILE's content) is not of the spec's config files, or ""."""
    recorded, planned = record.get(FINGERPRINT), config_fingerprint(spec)
    if recorded == planned:
        return ""
    return (f"from config files of fingerprint {recorded or '<none recorded>'}, while {spec['base_config']} and its "
            f"_BASE_ files give {planned} now (spec.config_fingerprint)")


def _has_checkpoint(out):
    """Whether ``out`` holds a checkpoint of either GALW training."""
    return any(os.path.isfile(os.path.join(d, LAST_CHECKPOINT)) for d in (out, os.path.join(out, PHASE_ONE_DIR)))


def resume_args(spec, run):
    """``["--resume"]`` when the run's folder holds a checkpoint (of either GALW training) left by an
    interrupted training of the same planned run, ``[]`` when it holds none; an error naming the folder
    when the checkpoint's run was planned with other overrides (or is unknown)."""
    out = run["out_dir"]
    if not _has_checkpoint(out):
        return []
    path = os.path.join(out, PLANNED_FILE)
    record = {}
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    recorded, planned = record.get("opts"), run_opts(spec, run)
    if recorded != planned:
        what = "no record of its opts" if recorded is None else \
            f"other opts than planned ({_differences(recorded, planned)})"
        raise ValueError(f"{out}: holds the checkpoints of an unfinished training with {what}; the planned run has "
                         f"opts {planned}. Remove that folder to train the planned run from the start")
    other = _other_configs(spec, record)
    if other:
        raise ValueError(f"{out}: holds the checkpoints of an unfinished training started {other}. Remove that "
                         "folder to train the planned run from the start")
    return ["--resume"]


def _record_planned(spec, run):
    """Write PLANNED_FILE; returns the config fingerprint the run starts from."""
    os.makedirs(run["out_dir"], exist_ok=True)
    fingerprint = config_fingerprint(spec)
    text = json.dumps({"opts": run_opts(spec, run), FINGERPRINT: fingerprint})
    atomic_write(os.path.join(run["out_dir"], PLANNED_FILE), lambda f: f.write(text.encode("utf-8")))
    return fingerprint


def _remove_periodic_checkpoints(tag, run):
    """A finished run keeps its result, model_final.pth and phase one's folder (a groups_from source's
    initial weights); its periodic checkpoints go: a whole study would keep about 70 GB of them
    (docs/tools.md)."""
    try:
        remove_periodic_checkpoints(run["out_dir"])
    except (OSError, ValueError, CheckpointError) as e:
        logger.warning("%s: its periodic checkpoints are kept: %s", tag, e)


def run_one(spec, run, tag, runner, extra_args=(), group_tasks=galw_group_tasks, done=None):
    """One planned run, skipped when its result file exists (and records the planned opts, else an
    error): (result data, None) or (None, failure).

    ``done``: {(variant, seed): (run, result)} of the runs finished so far, which a ``groups_from`` source
    must be in.
    """
    src = run["groups_from"]

    def failure(reason, where=""):
        logger.error("%s: %s%s", tag, reason, where)
        return None, {"name": run["name"], "seed": run["seed"], "reason": reason}

    saved = reusable_result(spec, run)
    if saved is not None:
        in_folder = os.path.join(run["out_dir"], RESULT_FILE)
        if os.path.isfile(in_folder):
            logger.info("%s: done before, reusing %s", tag, in_folder)
            keep_copy(run)
            _remove_periodic_checkpoints(tag, run)
        else:
            logger.info("%s: done before, reusing its kept copy %s", tag, run["result_copy"])
            if _has_checkpoint(run["out_dir"]):
                logger.warning("%s: %s holds the checkpoints of an unfinished training, not used: the kept copy %s "
                               "is the run's result (remove both to train it again)", tag, run["out_dir"],
                               run["result_copy"])
        return saved, None
    if src and (src["variant"], run["seed"]) not in (done or {}):
        return failure(f"groups_from run {src['variant']} did not finish")
    try:
        extra = []
        if src:
            source_run, source_result = done[(src["variant"], run["seed"])]
            restore_phase_one(src, source_run, spec, runner, extra_args)
            recorded = (source_result.get("groups") or {}).get("groups")
            extra = regroup_from_run(src, run["out_dir"], group_tasks, recorded=(recorded, run["seed"]))
    except (OSError, ValueError) as e:
        return failure(str(e))
    resume = resume_args(spec, run)
    fingerprint = _record_planned(spec, run)
    cmd = train_command(spec, run, extra_args=[*extra_args, *resume], extra_opts=extra)
    logger.info("%s: %s -> %s", tag, "resuming" if resume else "running", run["out_dir"])
    start, commit = time.time(), git_commit()  # the code it trains with, not a later commit's
    code = runner(cmd, run["out_dir"])
    if code != 0:
        return failure(f"exit code {code}", f" (train_net.py log in {run['out_dir']}/ablation_log.txt)")
    at_end = config_fingerprint(spec)
    if at_end != fingerprint:
        return failure(f"its config files changed while it trained (fingerprint {fingerprint} at the start, "
                       f"{at_end} at the end); remove {run['out_dir']} to train it again")
    try:
        data = dict(result_data(run, time.time() - start, run_opts(spec, run)), threads=run_threads(runner),
                    **{FINGERPRINT: fingerprint})
    except ValueError as e:
        return failure(str(e))
    save_result(run, data, cmd, commit)
    logger.info("%s: mAP %.2f, top-1 %.2f in %.0f s", tag, data["mAP"], data["top1"], data["seconds"])
    _remove_periodic_checkpoints(tag, run)
    return data, None


def _tuned(runs):
    return any(TUNED_WEIGHTS in r["opts"] for r in runs)


def borrowed_search(spec, data, out_base, results_base=None):
    """The search summary (choose(), plus "dataset") that dataset ``data`` takes tuned_static's weights
    from when it names ``search_from``: the source dataset's search runs, read from their kept copies
    under ``results_base/<source>`` (from their folders under ``out_base/<source>`` without
    ``results_base``), each checked like a reused result (check_result); nothing trains. None for a
    dataset that runs its own search."""
    src = data.get("search_from")
    if src is None:
        return None
    source = next(d for d in spec["datasets"] if d["name"] == src)
    spec = source_spec(spec, source)
    if results_base:
        check_kept_draw(os.path.join(results_base, src), source)
    runs = plan_search(spec, os.path.join(out_base, src), os.path.join(results_base, src) if results_base else None)
    read = committed_result if results_base else saved_result
    found = [d for d in (_read_checked(spec, run, read) for run in runs) if d is not None]
    return dict(choose(spec, found), dataset=src)


def _incomplete(search):
    where = search.get("dataset")
    return "the weight search is not complete" + (f" (it runs on dataset {where!r}: --data {where})" if where else "")


def _resolve_tuned(runs, search):
    """Put the searched weights (``search``: choose()'s summary) in place of TUNED_WEIGHTS in the runs'
    opts; returns the runs that need them while the search has chosen none, left as they are."""
    weights = search["weights"] if search else None
    blocked = [r for r in runs if TUNED_WEIGHTS in r["opts"] and weights is None]
    for r in runs:
        if r not in blocked:
            r["opts"] = [weights_text(weights) if o == TUNED_WEIGHTS else o for o in r["opts"]]
    return blocked


def finished_runs(spec, out_root, only=None, seeds=None, results_dir=None, read=saved_result, search=None):
    """{"results", "failed": [], "not_run", "search"} from the result files of the planned runs, each
    checked like a reused result (check_result: a file of other opts or config files is an error, never
    shown as the planned run's); trains nothing. ``read``: saved_result (the runs' folders) or
    run_result.committed_result (the copies under ``results_dir``). ``search``: borrowed_search's
    summary, instead of the search under ``out_root``."""
    results, not_run = [], []
    runs = plan_runs(spec, out_root, only, seeds, results_dir)
    if not _tuned(runs):
        search = None
    elif search is None:
        found = (_read_checked(spec, r, read) for r in plan_search(spec, out_root, results_dir))
        search = choose(spec, [d for d in found if d is not None])
    blocked = _resolve_tuned(runs, search)
    for run in runs:
        if run in blocked and read(run) is not None:
            raise ValueError(f"{run['name']} seed {run['seed']} has a result under {run['out_dir']} or "
                             f"{run.get('result_copy')}, but {_incomplete(search)}: the weights it had to train "
                             "with are unknown")
        saved = _read_checked(spec, run, read)
        if saved is not None:
            results.append(saved)
        else:
            not_run.append({"name": run["name"], "seed": run["seed"]})
    return {"results": results, "failed": [], "not_run": not_run, "search": search}


def dry_run_commands(spec, out_root, only=None, seeds=None, extra_args=(), search=None):
    """The command line of every planned run, the search's first when a variant needs it and no
    borrowed ``search`` is given (a ``groups_from`` run's groups file named by its source, the searched
    weights by the placeholder)."""
    runs = plan_runs(spec, out_root, only, seeds)
    commands = [train_command(spec, r, extra_args=extra_args) for r in plan_search(spec, out_root)] \
        if _tuned(runs) and search is None else []
    for run in runs:
        src = run["groups_from"]
        extra = ["MODEL.GALW.GROUPS_FILE", "<regrouped from " + src["groups_file"] + ">"] if src else []
        commands.append(train_command(spec, run, extra_args=extra_args, extra_opts=extra))
    return commands


def restore_phase_one(src, source_run, spec, runner, extra_args=()):
    """Give a ``groups_from`` run its source's phase-one files (groups file with the Gamma history, initial
    weights) where the source finished in another checkout and only its kept result remains: the source's
    first GALW training runs again alone (``train_net.py --galw-phase-one-only``, same seed and overrides;
    resumed from its checkpoint when an earlier restore was interrupted). Whether it found the groups the
    source's result records is checked where the file is read (:func:`regroup_from_run`)."""
    wanted = [src["groups_file"], *([src["init_weights"]] if src["init_weights"] else [])]
    if all(os.path.isfile(p) for p in wanted):
        return
    logger.info("%s seed %d: its phase-one files are missing (%s); running its first GALW training again",
                src["variant"], source_run["seed"], ", ".join(p for p in wanted if not os.path.isfile(p)))
    resume = resume_args(spec, source_run)  # before the record: an interrupted restore of other opts is refused
    _record_planned(spec, source_run)  # its phase-one checkpoint is then that of the planned source run
    cmd = train_command(spec, source_run, extra_args=[*extra_args, *resume, "--galw-phase-one-only"])
    code = runner(cmd, source_run["out_dir"])
    missing = [p for p in wanted if not os.path.isfile(p)]
    if code != 0 or missing:
        raise ValueError(f"{src['variant']} seed {source_run['seed']}: its phase one run again "
                         f"{'exited with code ' + str(code) if code else 'left no ' + ', '.join(missing)} "
                         f"(train_net.py log in {source_run['out_dir']}/ablation_log.txt)")


def _run_all(spec, tagged, runner, extra_args, group_tasks, chain_of, jobs):
    """Run (tag, run) pairs, chains side by side (``chain_of(run)``), each chain in order, the chains with
    the most runs left to train first (so the last ones to finish are short, not one long chain beside an
    idle job); results and failures in the pairs' order. Every saved result is checked against its planned
    run first, so a mismatch stops before anything trains."""
    pending = {}
    for i, (_, run) in enumerate(tagged):
        pending[i] = reusable_result(spec, run) is None
        if pending[i]:
            resume_args(spec, run)
    chains = {}
    for i, (tag, run) in enumerate(tagged):
        chains.setdefault(chain_of(run), []).append((i, tag, run))
    longest_first = sorted(chains.values(), key=lambda chain: -sum(pending[i] for i, _, _ in chain))

    def run_chain(chain):
        outcomes, done = [], {}
        for i, tag, run in chain:
            result, failure = run_one(spec, run, tag, runner, extra_args, group_tasks, done)
            if result is not None:
                done[(run["name"], run["seed"])] = (run, result)
            outcomes.append((i, result, failure))
        return outcomes

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = sorted(o for chain in pool.map(run_chain, longest_first) for o in chain)
    return [r for _, r, f in outcomes if f is None], [f for _, _, f in outcomes if f is not None]


def dependency_chains(runs):
    """chain_of for :func:`_run_all` over planned runs: a run shares the chain of the run whose phase one
    it regroups (``groups_from``, same seed, followed to its first source), which trains before it in
    plan order; every other run is independent, a chain of its own."""
    source = {r["name"]: r["groups_from"]["variant"] for r in runs if r["groups_from"]}

    def first_source(name):
        while name in source:
            name = source[name]
        return name

    return lambda run: (first_source(run["name"]), run["seed"])


def run_search(spec, out_root, runner, extra_args=(), jobs=1, results_dir=None):
    """Train the search's candidates not already done (``jobs`` at a time); choose()'s summary plus
    "failed" (the failed candidate runs)."""
    runs = plan_search(spec, out_root, results_dir)
    tagged = [(f"[search {i}/{len(runs)}] {r['name']} seed {r['seed']}", r) for i, r in enumerate(runs, 1)]
    results, failed = _run_all(spec, tagged, runner, extra_args, galw_group_tasks, lambda r: r["out_dir"], jobs)
    return dict(choose(spec, results), failed=failed)


def run_ablation(spec, out_root, runner=subprocess_runner, only=None, seeds=None, extra_args=(),
                 group_tasks=galw_group_tasks, jobs=1, results_dir=None, search=None):
    """Run every planned run not already done; returns {"results", "failed", "search"} in plan order.

    ``jobs`` > 1 runs independent runs concurrently (:func:`dependency_chains`: a ``groups_from`` source
    always finishes before the runs that regroup it). ``search``:
    borrowed_search's summary, used instead of training the search under ``out_root``.
    """
    runs = plan_runs(spec, out_root, only, seeds, results_dir)
    if not os.path.isfile(base_config_path(spec)):
        raise FileNotFoundError(f"{spec['_path']}: base_config {spec['base_config']!r} does not exist")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    failed = []
    if not _tuned(runs):
        search = None
    else:
        if search is None:
            search = run_search(spec, out_root, runner, extra_args, jobs, results_dir)
            failed += search.pop("failed")
        blocked = _resolve_tuned(runs, search)
        failed += [{"name": r["name"], "seed": r["seed"], "reason": _incomplete(search)} for r in blocked]
        runs = [r for r in runs if r not in blocked]
    tagged = [(f"[{i}/{len(runs)}] {r['name']} seed {r['seed']}", r) for i, r in enumerate(runs, 1)]
    results, chain_failed = _run_all(spec, tagged, runner, extra_args, group_tasks, dependency_chains(runs), jobs)
    failed += chain_failed
    if failed:
        logger.warning("%d run(s) failed or were skipped: %s", len(failed),
                       ", ".join(f"{f['name']}/seed{f['seed']}" for f in failed))
    return {"results": results, "failed": failed, "search": search}
