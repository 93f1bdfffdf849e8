"""One run's result file: what a finished training left in its folder, read once and kept.

``OUT/<variant>/seed<k>/ablation_result.json`` is written through ``galw.results.write_result``
(machine, load, versions, commit and date beside the data, complete or absent). Its ``data`` holds
the final figures (search mAP, top-1, top-10, detection AP), the curve (those figures at every
evaluation in metrics.json), the groups GALW found, the sigma / weight trajectories, the config
overrides it trained with (``opts``: the spec's common opts and the run's own, placeholders resolved,
so a reused result can be checked against the planned run) and, for a search run, the weight vector it
tried. With ``run["result_copy"]`` the same file is also kept at
that path (``results/ablation/<data>/<variant>/seed<k>.json``), so the study can be committed and
its report rebuilt from the copies alone.
"""
import json
import math
import os
import shlex

from galw_core.files import atomic_write

from galw.results import read_result, write_result
from galw.visualization.run_files import find_groups_json, load_metrics_records, scalar_series

from .spec import repo_relative

__all__ = ["METRICS", "RESULT_FILE", "collect_metrics", "committed_result", "keep_copy", "metrics_curve",
           "result_data", "run_groups", "saved_result", "save_result", "weight_trajectories"]

#: The result file in a run's folder.
RESULT_FILE = "ablation_result.json"
#: A result's metrics: (key, detectron2 "<task>/<metric>" name); mAP and top-1 are required.
METRICS = (("mAP", "search/mAP"), ("top1", "search/top1"), ("top10", "search/top10"), ("det_AP", "detection/AP"))
#: EventStorage prefixes of GALW's trajectories (galw_core/train_step.py, log_weighting_scalars).
TRAJECTORIES = (("sigma", "galw/sigma/"), ("group_weight", "galw/group_weight/"), ("weight", "galw/weight/"))
_GROUP_FIELDS = ("groups", "num_groups", "linkage", "s_star")


def _finite(value):
    """A float for JSON: non-finite values (a diverged run) become None (result files hold no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _pick(flat, suffix):
    for key, value in flat.items():
        if (key == suffix or key.endswith("/" + suffix)) and isinstance(value, (int, float)):
            return _finite(value)
    return None


def _metrics_of(flat):
    """METRICS found in a flat {"<task>/<metric>": value} record, or None without mAP and top-1."""
    found = {key: _pick(flat, name) for key, name in METRICS}
    if found["mAP"] is None or found["top1"] is None:
        return None
    return {k: v for k, v in found.items() if v is not None}


def _records(out_dir):
    """metrics.json's records of the training that finished: a resumed training appends the
    iterations after its checkpoint again (the iteration goes back), and those replace the
    interrupted training's; records of one iteration within a training are all kept."""
    path = os.path.join(out_dir, "metrics.json")
    records = []
    for rec in load_metrics_records(path) if os.path.isfile(path) else []:
        it = rec.get("iteration")
        if it is not None and records and it < records[-1].get("iteration", -1):
            while records and records[-1].get("iteration", -1) >= it:
                records.pop()
        records.append(rec)
    return records


def collect_metrics(out_dir):
    """METRICS and "source" of a finished run: its search JSON, else metrics.json's last evaluation."""
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
        got = _metrics_of(flat)
        if got is None:
            raise ValueError(f"{path}: expected metrics.search.mAP and metrics.search.top1")
        return dict(got, source=path)
    for rec in reversed(_records(out_dir)):
        got = _metrics_of(rec)
        if got is not None:
            return dict(got, source=os.path.join(out_dir, "metrics.json"))
    raise ValueError(f"{out_dir}: no inference/search_*.json and no search/mAP, search/top1 line in metrics.json")


def metrics_curve(records):
    """[{"iteration", "mAP", "top1", "top10", "det_AP"}] at every evaluation of metrics.json."""
    curve = []
    for rec in records:
        got = _metrics_of(rec)
        if got is not None:
            curve.append(dict(got, iteration=rec.get("iteration")))
    return curve


def weight_trajectories(records):
    """{"sigma" | "group_weight" | "weight": {name: {"iteration": [...], "value": [...]}}}."""
    out = {}
    for kind, prefix in TRAJECTORIES:
        out[kind] = {name: {"iteration": xs, "value": [_finite(y) for y in ys]}
                     for name, (xs, ys) in sorted(scalar_series(records, prefix).items())}
    return out


def run_groups(out_dir):
    """The groups GALW found ({groups, num_groups, linkage, s_star, file}), or None without a groups file."""
    path = find_groups_json(out_dir)
    if path is None:
        return None
    with open(path) as f:
        found = json.load(f)
    missing = [k for k in _GROUP_FIELDS if k not in found]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; expected {list(_GROUP_FIELDS)}")
    return dict({k: found[k] for k in _GROUP_FIELDS}, file=path)


def result_data(run, seconds, opts):
    """The ``data`` of a finished run's result file, read from its folder; ``opts``: the overrides it
    trained with (runner.run_opts). Its files (metrics source, groups file) are named relative to the
    run's folder."""
    out_dir = run["out_dir"]
    records = _records(out_dir)
    metrics, groups = collect_metrics(out_dir), run_groups(out_dir)
    metrics["source"] = os.path.relpath(metrics["source"], out_dir)
    if groups is not None:
        groups["file"] = os.path.relpath(groups["file"], out_dir)
    data = dict(name=run["name"], seed=run["seed"], seconds=round(seconds, 1), **metrics, curve=metrics_curve(records),
                groups=groups, trajectories=weight_trajectories(records), opts=[str(o) for o in opts])
    if run.get("weights") is not None:
        data["weights"] = run["weights"]
    return data


def save_result(run, data, cmd, commit=None):
    """Write ``OUT_DIR/ablation_result.json`` (complete or absent; the command's paths inside the
    repository relative to it), its meta naming ``commit`` (the one the run started at) when given;
    returns its path."""
    out_dir = run["out_dir"]
    command = shlex.join(repo_relative(a) if os.path.isabs(a) else a for a in map(str, cmd))
    path = write_result(os.path.basename(out_dir), os.path.splitext(RESULT_FILE)[0], data,
                        root=os.path.dirname(out_dir), command=command, commit=commit)
    keep_copy(run)
    return path


def keep_copy(run):
    """Copy the run's result file to ``run["result_copy"]`` (when set), atomically. An identical copy
    is left as it is; a different one (the run was trained again) is an error, so the results folder
    never keeps figures its run no longer has."""
    dst = run.get("result_copy")
    if not dst:
        return
    src = os.path.join(run["out_dir"], RESULT_FILE)
    with open(src, "rb") as f:
        content = f.read()
    if os.path.isfile(dst):
        with open(dst, "rb") as f:
            if f.read() == content:
                return
        raise ValueError(f"{dst}: the kept copy differs from the run's result file {src} (the run was trained "
                         "again); expected identical files. Remove the copy to keep the new result, or remove "
                         "the run's result file to keep the old one")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    atomic_write(dst, lambda f: f.write(content))


def committed_result(run):
    """The ``data`` of the run's kept copy (``run["result_copy"]``), or None."""
    path = run.get("result_copy")
    return read_result(path)["data"] if path and os.path.isfile(path) else None


def saved_result(run):
    """The ``data`` of the result file a finished run left in its folder, or None."""
    path = os.path.join(run["out_dir"], RESULT_FILE)
    if not os.path.isfile(path):
        return None
    return read_result(path)["data"]
