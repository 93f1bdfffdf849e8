"""The ablation spec (``tools/ablation_spec.yaml``): its validation and the runs it plans.

A run is one (variant, seed): a ``train_net.py`` training in ``OUT/<variant>/seed<k>`` with the
base config, the spec's common overrides and the variant's own (``{seed}`` in them = the seed;
``{tuned_weights}`` = the static weights the spec's ``search`` chose, search.py). A variant trains
the seeds it lists (``seeds``), else the spec's.
"""
import hashlib
import os
import sys

import yaml

from .data import validate_datasets
from .claims import validate_claims
from .search import SEARCH_DIR, validate_search

__all__ = ["REPO_ROOT", "TUNED_WEIGHTS", "base_config_chain", "base_config_path", "config_fingerprint", "load_spec",
           "plan_runs", "schedule_opts", "repo_relative", "train_command", "variant_seeds"]

#: The repository root (projects/GALW/galw/ablation/spec.py -> <repo>): train_net.py and relative base configs.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
#: The placeholder, in a variant's opts, for the weight vector the spec's search chose.
TUNED_WEIGHTS = "{tuned_weights}"


def repo_relative(path):
    """``path`` relative to the repository when it lies inside it, else as given: what a committed file
    (a result, a report) holds, so it names no machine's folders."""
    rel = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _seed_list(value, where):
    if not isinstance(value, list) or not value or not all(isinstance(s, int) for s in value):
        raise ValueError(f"{where} must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} lists a seed twice: {value}")
    return value


def load_spec(path):
    """The spec YAML at ``path`` (``yaml.safe_load``), validated; errors name the file and the field."""
    with open(path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with base_config, seeds, variants")
    for key in ("base_config", "seeds", "variants"):
        if key not in spec:
            raise ValueError(f"{path}: missing field {key!r}")
    spec.setdefault("common_opts", [])
    _seed_list(spec["seeds"], f"{path}: 'seeds'")
    seen = []
    for i, v in enumerate(spec["variants"]):
        if not isinstance(v, dict) or "name" not in v or "opts" not in v:
            raise ValueError(f"{path}: variants[{i}] needs 'name' and 'opts'")
        if v["name"] in seen or v["name"] == SEARCH_DIR:
            raise ValueError(f"{path}: duplicate variant name {v['name']!r} (or {SEARCH_DIR!r}, the search's folder)")
        if len(v["opts"]) % 2:
            raise ValueError(f"{path}: variant {v['name']!r} has an odd number of opts (KEY VALUE pairs)")
        v.setdefault("tables", [])
        if "seeds" in v:
            _seed_list(v["seeds"], f"{path}: variant {v['name']!r}: 'seeds'")
        if TUNED_WEIGHTS in [str(o) for o in v["opts"]] and not spec.get("search"):
            raise ValueError(f"{path}: variant {v['name']!r} uses {TUNED_WEIGHTS} but the spec has no 'search' section")
        src = v.get("groups_from")
        if src is not None:
            missing = [k for k in ("variant", "groups_file", "num_groups") if k not in src]
            if missing:
                raise ValueError(f"{path}: variant {v['name']!r}: groups_from needs {missing}")
            if src["variant"] not in seen:
                raise ValueError(f"{path}: variant {v['name']!r}: groups_from.variant {src['variant']!r} "
                                 "must be a variant listed before it")
            missing = sorted(set(variant_seeds(spec, v)) - set(variant_seeds(spec, _variant(spec, src["variant"]))))
            if missing:
                raise ValueError(f"{path}: variant {v['name']!r}: seeds {missing} are not seeds of its groups_from "
                                 f"source {src['variant']!r}")
        seen.append(v["name"])
    spec["_path"] = path
    validate_search(spec, path)
    validate_datasets(spec, path)
    _check_borrowed_searches(spec, path)
    validate_claims(spec, path)
    return spec


def _check_borrowed_searches(spec, path):
    """A dataset's ``search_from`` names one whose planned variants use the searched weights: only then
    does that dataset run its search (runner.run_ablation)."""
    for i, d in enumerate(spec["datasets"]):
        src = d.get("search_from")
        if src is None:
            continue
        source = next(e for e in spec["datasets"] if e["name"] == src)
        names = source.get("variants") or [v["name"] for v in spec["variants"]]
        if not any(TUNED_WEIGHTS in [str(o) for o in _variant(spec, n)["opts"]] for n in names):
            raise ValueError(f"{path}: datasets[{i}].search_from: dataset {src!r} trains no variant with "
                             f"{TUNED_WEIGHTS} (its variants: {names}), so it runs no weight search to take")


def _variant(spec, name):
    return next(v for v in spec["variants"] if v["name"] == name)


def variant_seeds(spec, variant):
    """The seeds a variant trains: its own ``seeds``, else the spec's."""
    return list(variant.get("seeds") or spec["seeds"])


def plan_runs(spec, out_root, only=None, seeds=None, results_dir=None):
    """The ordered runs: per seed, the variants in spec order that train it (with ``only``, plus their
    groups_from sources). ``seeds`` replaces every variant's seeds. ``results_dir``: each run's result
    file is also kept as ``results_dir/<variant>/seed<k>.json`` (run["result_copy"]), for committing."""
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
    per_variant = {n: list(seeds) if seeds else variant_seeds(spec, _variant(spec, n)) for n in names}
    order = list(dict.fromkeys(s for n in names for s in per_variant[n]))
    runs = []
    for seed in order:
        for name in (n for n in names if seed in per_variant[n]):
            v = _variant(spec, name)
            run = {"name": name, "seed": seed, "out_dir": os.path.join(out_root, name, f"seed{seed}"),
                   "opts": [str(o).replace("{seed}", str(seed)) for o in v["opts"]], "groups_from": None,
                   "result_copy": os.path.join(os.path.abspath(results_dir), name, f"seed{seed}.json")
                   if results_dir else None}
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
    base = spec["base_config"]
    return base if os.path.isabs(base) else os.path.join(REPO_ROOT, base)


def base_config_chain(spec):
    """The base config and every file it inherits from through ``_BASE_`` (one file or a list; a
    relative one relative to the file naming it, as fvcore's ``load_yaml_with_base``), depth first,
    the base config first."""
    chain = []

    def visit(path, via):
        if path in via:
            raise ValueError(f"{via[-1]}: _BASE_ {path!r} closes a cycle of config files {[*via, path]}")
        chain.append(path)
        with open(path) as f:
            parents = (yaml.safe_load(f) or {}).get("_BASE_")
        for parent in parents if isinstance(parents, list) else [] if parents is None else [parents]:
            if not isinstance(parent, str):
                raise ValueError(f"{path}: _BASE_ must be a file name or a list of file names, got {parents!r}")
            parent = os.path.expanduser(parent)
            visit(os.path.abspath(parent if os.path.isabs(parent) else os.path.join(os.path.dirname(path), parent)),
                  [*via, path])

    visit(os.path.abspath(base_config_path(spec)), [])
    return chain


def config_fingerprint(spec):
    """sha256 (first 16 hex digits) of the base config chain's files, each its name relative to the
    repository and its bytes, read now: a run trained from other config files is not the planned run,
    even with the same opts, so the runner refuses to reuse or resume it (runner.check_result,
    resume_args) and fails a run whose files changed while it trained (runner.run_one)."""
    digest = hashlib.sha256()
    for path in base_config_chain(spec):
        with open(path, "rb") as f:
            digest.update(repo_relative(path).encode("utf-8") + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


def train_command(spec, run, python=sys.executable, extra_args=(), extra_opts=()):
    """The ``train_net.py`` command line of one run."""
    return [python, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", base_config_path(spec), *extra_args,
            "OUTPUT_DIR", run["out_dir"], "SEED", str(run["seed"]),
            *[str(o) for o in spec["common_opts"]], *run["opts"], *extra_opts]


def schedule_opts(spec, max_iter):
    """Overrides that shorten the base config's schedule to ``max_iter`` iterations, its LR
    steps scaled by the same factor (a reduced-scale ablation keeps the schedule's shape)."""
    from detectron2.config import get_cfg

    from galw import add_galw_config
    from galw.config_file import merge_config_file

    if max_iter < 1:
        raise ValueError(f"--max-iter must be >= 1, got {max_iter}")
    cfg = get_cfg()
    add_galw_config(cfg)
    merge_config_file(cfg, base_config_path(spec))
    cfg.merge_from_list([str(o) for o in spec["common_opts"]])
    steps = tuple(int(round(s * max_iter / cfg.SOLVER.MAX_ITER)) for s in cfg.SOLVER.STEPS)
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps),
            "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, max_iter))]
