"""The spec's ``search``: static loss-weight vectors tried on a validation split, the best one becomes
``tuned_static``'s weights (the ``{tuned_weights}`` placeholder in a variant's opts).

Each candidate is one ``MODEL.GALW.MANUAL_WEIGHTS`` vector (task order of galw/modeling/tasks.py)
trained with the search's opts on each of its seeds, in ``OUT/search/<candidate>/seed<k>``, resumable
like the variants' runs. Its score is the mean validation mAP over those seeds; the search's
``DATASETS.TEST`` must be a validation split of the training identities (galw/data/id_val.py), never
the test gallery, and its ``DATASETS.TRAIN`` that split's training part, which holds none of the
held-out identities. The best candidate is chosen only once every candidate has every seed, the first
in spec order on a tie.
"""
import ast
import os

import numpy as np

__all__ = ["SEARCH_DIR", "VALIDATION_MARK", "choose", "plan_search", "validate_search", "weights_text"]

#: The search's runs under OUT (and under the results folder).
SEARCH_DIR = "search"
#: What a validation split's name holds (galw/data/id_val.py: <prefix>_idval_gallery).
VALIDATION_MARK = "_idval_"


def _opt(opts, key):
    pairs = dict(zip(map(str, opts[::2]), opts[1::2]))
    return None if key not in pairs else str(pairs[key])


def _names(value):
    """The dataset names of a DATASETS.TRAIN / TEST override (``"('a',)"`` or ``['a']``), or None."""
    try:
        names = ast.literal_eval(value) if value is not None else None
    except (ValueError, SyntaxError):
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return None
    return list(names)


def _validation_prefix(test, where):
    """``<prefix>`` of a DATASETS.TEST that is exactly ``('<prefix>_idval_gallery',)``."""
    names = _names(test)
    mark = VALIDATION_MARK + "gallery"
    if names is None or len(names) != 1 or not names[0].endswith(mark) or names[0] == mark:
        raise ValueError(f"{where}.opts: DATASETS.TEST must be exactly ('<prefix>{mark}',), a validation split of "
                         f"the training identities (galw/data/id_val.py), never the test gallery; got {test!r}")
    return names[0][:-len(mark)]


def validate_search(spec, path):
    """Check ``spec["search"]`` (when present); errors name the file and the field."""
    s = spec.get("search")
    if s is None:
        return
    where = f"{path}: search"
    if not isinstance(s, dict) or "candidates" not in s or "seeds" not in s:
        raise ValueError(f"{where}: expected a mapping with seeds, opts, candidates")
    s.setdefault("opts", [])
    if len(s["opts"]) % 2:
        raise ValueError(f"{where}.opts: odd number of opts (KEY VALUE pairs)")
    if not s["seeds"] or not all(isinstance(x, int) for x in s["seeds"]):
        raise ValueError(f"{where}.seeds: expected a non-empty list of integers, got {s['seeds']!r}")
    prefix = _validation_prefix(_opt(s["opts"], "DATASETS.TEST"), where)
    want = f"('{prefix}{VALIDATION_MARK}train',)"
    if _names(_opt(s["opts"], "DATASETS.TRAIN")) != [f"{prefix}{VALIDATION_MARK}train"]:
        raise ValueError(f"{where}.opts: DATASETS.TRAIN must be exactly {want}, the training part of the validation "
                         f"split DATASETS.TEST scores on (galw/data/id_val.py), so no held-out identity is trained on; "
                         f"got {_opt(s['opts'], 'DATASETS.TRAIN')!r}")
    if _opt(s["opts"], "MODEL.GALW.WEIGHTING") != "manual":
        raise ValueError(f"{where}.opts: MODEL.GALW.WEIGHTING must be manual (the candidates are static weights)")
    names, lengths = [], set()
    for i, c in enumerate(s["candidates"]):
        if not isinstance(c, dict) or "name" not in c or "weights" not in c:
            raise ValueError(f"{where}.candidates[{i}]: needs 'name' and 'weights'")
        w = c["weights"]
        if not isinstance(w, list) or not w or not all(isinstance(x, (int, float)) and x > 0 for x in w):
            raise ValueError(f"{where}.candidates[{i}] ({c['name']}): weights must be a list of positive numbers")
        if c["name"] in names or os.sep in str(c["name"]):
            raise ValueError(f"{where}.candidates[{i}]: name {c['name']!r} repeated or not a plain folder name")
        names.append(c["name"])
        lengths.add(len(w))
    if len(names) < 2 or len(lengths) != 1:
        raise ValueError(f"{where}.candidates: expected 2+ candidates, all of one length, got lengths {sorted(lengths)}")


def weights_text(weights):
    """MODEL.GALW.MANUAL_WEIGHTS as a command-line value: ``[1.0, 2.0, ...]``."""
    return "[" + ", ".join(repr(float(x)) for x in weights) + "]"


def plan_search(spec, out_root, results_dir=None):
    """The search's runs: per seed, every candidate in spec order (run["weights"] = its vector)."""
    s = spec["search"]
    out_root = os.path.abspath(out_root)
    runs = []
    for seed in s["seeds"]:
        for c in s["candidates"]:
            rel = os.path.join(SEARCH_DIR, c["name"])
            runs.append({"name": c["name"], "seed": seed, "out_dir": os.path.join(out_root, rel, f"seed{seed}"),
                         "opts": [str(o).replace("{seed}", str(seed)) for o in s["opts"]]
                         + ["MODEL.GALW.MANUAL_WEIGHTS", weights_text(c["weights"])],
                         "groups_from": None, "weights": [float(x) for x in c["weights"]],
                         "result_copy": os.path.join(os.path.abspath(results_dir), rel, f"seed{seed}.json")
                         if results_dir else None})
    return runs


def choose(spec, results):
    """{"candidates": [{name, weights, seeds, mAP, score}], "complete", "best", "weights", "score"} from
    the search runs' result data (``results``); best, weights and score are None until complete."""
    s = spec["search"]
    out, complete = [], True
    for c in s["candidates"]:
        mine = sorted((r for r in results if r["name"] == c["name"]), key=lambda r: r["seed"])
        done = [r for r in mine if r["seed"] in s["seeds"]]
        full = len(done) == len(s["seeds"])
        complete &= full
        out.append({"name": c["name"], "weights": [float(x) for x in c["weights"]],
                    "seeds": [r["seed"] for r in done], "mAP": [r["mAP"] for r in done],
                    "score": float(np.mean([r["mAP"] for r in done])) if full else None})
    best = max(out, key=lambda c: c["score"]) if complete else None  # max keeps the first of equals
    return {"candidates": out, "complete": complete, "best": best and best["name"],
            "weights": best and best["weights"], "score": best and best["score"]}
