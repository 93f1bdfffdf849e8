"""Readers for a run's output files: metrics.json, galw_groups.json and search JSONs.

Each reader validates the fields the plots need and raises a ValueError naming the
file and the field, so a plot never draws from half-understood input.
"""
import json
import logging
import os
import re

logger = logging.getLogger(__name__)

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
_GROUPS_FIELDS = ("groups", "num_groups", "linkage", "s_star", "gamma_history")


def load_metrics_records(path):
    """The list of dicts of detectron2's metrics.json (one JSON object per line).

    A truncated last line (a run killed mid-write) is skipped with a warning.
    """
    records = []
    with open(path) as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                logger.warning("%s: skipped the unparsable last line %d (%s)", path, lineno, e)
                continue
            raise ValueError(f"{path}: line {lineno} is not a JSON object: {e}") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {lineno} is a {type(rec).__name__}, expected a JSON object")
        records.append(rec)
    return records


def scalar_series(records, prefix):
    """{name: ([iteration], [value])} for every scalar key ``<prefix><name>`` in the records."""
    series = {}
    for rec in records:
        it = rec.get("iteration")
        for key, value in rec.items():
            if not key.startswith(prefix) or not isinstance(value, (int, float)):
                continue
            xs, ys = series.setdefault(key[len(prefix):], ([], []))
            xs.append(it if it is not None else len(xs))
            ys.append(float(value))
    return series


def load_groups_json(path):
    """galw_groups.json as written by the GALW hook (docs/galw.md, Hook), validated."""
    with open(path) as f:
        data = json.load(f)
    missing = [k for k in _GROUPS_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; expected {list(_GROUPS_FIELDS)}")
    grouped = [t for g in data["groups"] for t in g]
    if len(grouped) != len(set(grouped)):
        raise ValueError(f"{path}: field 'groups' lists a task twice: {data['groups']}")
    # s* is empty when the groups were not clustered (GROUPING per_task or given groups).
    unknown = sorted(set(grouped) - set(data["s_star"])) if data["s_star"] else []
    if unknown:
        raise ValueError(f"{path}: tasks {unknown} in 'groups' have no value in 's_star'")
    ungrouped = sorted(set(data["s_star"]) - set(grouped))
    if ungrouped:
        raise ValueError(f"{path}: tasks {ungrouped} in 's_star' are in no group of 'groups'")
    if len(data["groups"]) != data["num_groups"]:
        raise ValueError(
            f"{path}: 'num_groups' is {data['num_groups']} but 'groups' has {len(data['groups'])} groups"
        )
    for task, hist in data["gamma_history"].items():
        if not isinstance(hist, list) or not all(isinstance(v, (int, float)) for v in hist):
            raise ValueError(f"{path}: gamma_history[{task!r}] must be a list of numbers")
    return data


def load_search_json(path):
    """A search_<gallery>.json of the evaluator (docs/evaluation.md), validated."""
    with open(path) as f:
        data = json.load(f)
    for key in ("dataset", "metrics", "queries"):
        if key not in data:
            raise ValueError(f"{path}: missing field {key!r}; expected dataset, metrics, queries")
    for i, q in enumerate(data["queries"]):
        for key in ("query_image", "query_box", "top10"):
            if key not in q:
                raise ValueError(f"{path}: queries[{i}] has no field {key!r}")
        for j, hit in enumerate(q["top10"]):
            for key in ("image", "box", "similarity", "correct"):
                if key not in hit:
                    raise ValueError(f"{path}: queries[{i}].top10[{j}] has no field {key!r}")
    return data


_FLAT_GALLERY_KEY = re.compile(r"(?:^|/)search_TestG(\d+)/(\w+)$")


def gallery_size_metrics(metrics, metric="mAP", source="<metrics>"):
    """[(gallery size, value)] for the CUHK-SYSU TestG50..TestG4000 protocols, ascending.

    ``metrics`` is the evaluator's nested dict ({"search_TestG50": {"mAP": ..}}) or a
    flattened metrics.json line ("search_TestG50/mAP", possibly prefixed by a dataset).
    """
    found = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            m = re.fullmatch(r"search_TestG(\d+)", key)
            if m and metric in value:
                found[int(m.group(1))] = float(value[metric])
        else:
            m = _FLAT_GALLERY_KEY.search(key)
            if m and m.group(2) == metric:
                found[int(m.group(1))] = float(value)
    if not found:
        raise ValueError(
            f"{source}: no search_TestG<N> {metric} values; expected the CUHK-SYSU protocols "
            f"search_TestG{GALLERY_SIZES[0]}..search_TestG{GALLERY_SIZES[-1]}"
        )
    return sorted(found.items())


def last_eval_record(records, key_suffix="search/mAP"):
    """The last metrics.json record holding a key ending in ``key_suffix`` (or None)."""
    for rec in reversed(records):
        if any(k == key_suffix or k.endswith("/" + key_suffix) for k in rec):
            return rec
    return None


def find_groups_json(output_dir):
    """The galw_groups.json that holds the clustering (s*, Gamma history): OUTPUT_DIR's, else one
    in a direct subfolder (a two-phase run's first training writes it there; the second training's
    own file, read from GROUPS_FILE, has the groups but no s*). None if there is none."""
    path = os.path.join(output_dir, "galw_groups.json")
    found = sorted(
        os.path.join(output_dir, d, "galw_groups.json")
        for d in os.listdir(output_dir)
        if os.path.isfile(os.path.join(output_dir, d, "galw_groups.json"))
    )
    candidates = ([path] if os.path.isfile(path) else []) + found
    with_s_star = [p for p in candidates if _has_s_star(p)]
    if len(with_s_star) > 1 and with_s_star[0] != path:
        logger.warning("%s: several galw_groups.json %s; using the first", output_dir, with_s_star)
    chosen = (with_s_star or candidates or [None])[0]
    if chosen is not None and chosen != path and os.path.isfile(path):
        logger.info("%s has no s*: the groups are drawn from %s", path, chosen)
    return chosen


def _has_s_star(path):
    try:
        with open(path) as f:
            return bool(json.load(f).get("s_star"))
    except (OSError, ValueError):
        return False


def find_search_jsons(output_dir):
    """Sorted paths of OUTPUT_DIR/inference/search_*.json."""
    inf = os.path.join(output_dir, "inference")
    if not os.path.isdir(inf):
        return []
    return sorted(
        os.path.join(inf, f) for f in os.listdir(inf) if f.startswith("search_") and f.endswith(".json")
    )
