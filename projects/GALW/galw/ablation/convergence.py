"""Whether a run had converged: how much its mAP still moved over the last part of its training.

A run's curve (run_result.metrics_curve) holds mAP at every evaluation (TEST.EVAL_PERIOD). Over the
last TAIL of its iterations (from TAIL_START x the last evaluated iteration to that iteration), a run
reports the spread of mAP (max - min over the window's values) and its drift (last value - value at
the window's start). The value at the window's start is interpolated linearly between the two
evaluations around it, so the window covers its whole span whatever the evaluation period.
A variant's worst seed is the one with the largest spread; its max_abs_drift is the largest |drift|
over all its seeds, which may be another seed's. The plain sum ("equal") counts as converged when
every seed's spread and |drift| are below CONVERGED_POINTS.
"""
import numpy as np

__all__ = ["BASELINE", "CONVERGED_POINTS", "TAIL_START", "convergence", "run_convergence", "variant_convergence"]

#: The window starts at this fraction of the last evaluated iteration (the last 20 % of training).
TAIL_START = 0.8
#: A run moving less than this (mAP points) over the window counts as converged.
CONVERGED_POINTS = 1.0
#: The variant whose convergence the study's conclusions rest on.
BASELINE = "equal"


def run_convergence(curve, key="mAP", tail_start=TAIL_START):
    """{"start", "end", "evaluations", "value_at_start", "last", "range", "drift"} of one curve.

    ``evaluations``: the evaluations strictly inside the window (after its start). Range and drift
    are None when the curve cannot say (no evaluation at or before the start, or none after it).
    """
    points = sorted((p["iteration"], p[key]) for p in curve if p.get(key) is not None and p.get("iteration") is not None)
    out = {"start": None, "end": None, "evaluations": 0, "value_at_start": None, "last": None, "range": None,
           "drift": None}
    if not points:
        return out
    its = np.asarray([p[0] for p in points], dtype=np.float64)
    vals = np.asarray([p[1] for p in points], dtype=np.float64)
    end = its[-1]
    start = tail_start * end
    # detectron2 records the evaluation that follows N iterations at iteration N - 1 (EvalHook.after_step
    # runs before the count advances) and the final one at MAX_ITER: the one after `start` iterations
    # is the window's first value, not one iteration before it
    its = np.where(its == start - 1, start, its)
    inside = its > start
    out.update(start=float(start), end=float(end), evaluations=int(inside.sum()), last=float(vals[-1]))
    if its[0] > start or not inside.any():
        return out
    at_start = float(np.interp(start, its, vals))
    window = np.concatenate([[at_start], vals[inside]])
    out.update(value_at_start=at_start, range=float(window.max() - window.min()), drift=float(vals[-1] - at_start))
    return out


def variant_convergence(results, name, key="mAP"):
    """Per seed run_convergence of variant ``name``'s results, the worst seed, and whether all converged.

    {"name", "runs": {seed: ...}, "worst_seed", "worst_range", "max_abs_drift", "converged"}:
    ``max_abs_drift`` is the largest |drift| over every seed, not only the worst seed's; ``converged``
    is None when some seed's curve cannot say.
    """
    mine = sorted((r for r in results if r["name"] == name), key=lambda r: r["seed"])
    runs = {r["seed"]: run_convergence(r.get("curve", []), key) for r in mine}
    known = {s: c for s, c in runs.items() if c["range"] is not None}
    out = {"name": name, "runs": runs, "worst_seed": None, "worst_range": None, "max_abs_drift": None,
           "converged": None}
    if known:
        worst = max(known, key=lambda s: (known[s]["range"], abs(known[s]["drift"])))
        out.update(worst_seed=worst, worst_range=known[worst]["range"],
                   max_abs_drift=max(abs(c["drift"]) for c in known.values()))
    if runs and len(known) == len(runs):
        out["converged"] = all(c["range"] < CONVERGED_POINTS and abs(c["drift"]) < CONVERGED_POINTS
                               for c in known.values())
    return out


def convergence(spec, results, key="mAP"):
    """{"variants": [variant_convergence per variant with results], "baseline", "baseline_converged"}."""
    names = [v["name"] for v in spec["variants"] if any(r["name"] == v["name"] for r in results)]
    variants = [variant_convergence(results, n, key) for n in names]
    base = next((v for v in variants if v["name"] == BASELINE), None)
    return {"key": key, "tail_start": TAIL_START, "threshold": CONVERGED_POINTS, "variants": variants,
            "baseline": BASELINE, "baseline_converged": None if base is None else base["converged"]}
