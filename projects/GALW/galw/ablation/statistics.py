"""Per-variant statistics over seeds, and paired differences between variants.

Runs of two variants with the same seed start from the same initialisation and see the same data
order (train_net.py's SEED), so a variant is compared with a reference on the seeds both have: the
per-seed differences, their mean, a 95 % confidence interval and p-value from the paired t-test
(scipy.stats.ttest_rel), and their number n.
"""
import numpy as np

__all__ = ["COLUMNS", "CONFIDENCE", "REFERENCES", "aggregate", "all_comparisons", "mean_std", "paired",
           "paired_by_name", "paired_comparisons"]

#: Columns of the table: (result key, header); top-10 and detection AP only when every run has them.
COLUMNS = (("mAP", "mAP (%)"), ("top1", "top-1 (%)"), ("top10", "top-10 (%)"), ("det_AP", "detection AP (%)"))
#: Variants the others are compared with, when present: the plain sum and the searched static weighting.
REFERENCES = ("equal", "tuned_static")
#: Confidence level of the intervals of the paired differences.
CONFIDENCE = 0.95


def mean_std(values):
    """(mean, sample standard deviation with ddof=1, or None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def aggregate(spec, results):
    """Per variant in spec order: runs, seeds, per-run values, mean and std of every column it has."""
    rows = []
    for v in spec["variants"]:
        mine = sorted((r for r in results if r["name"] == v["name"]), key=lambda r: r["seed"])
        if not mine:
            continue
        row = {"name": v["name"], "tables": v.get("tables", []), "runs": len(mine), "seeds": [r["seed"] for r in mine]}
        for key, _ in COLUMNS:
            values = [r.get(key) for r in mine]
            if any(x is None for x in values):
                continue
            row[key] = values
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        rows.append(row)
    return rows


def paired(row, ref, key):
    """Paired difference ``row - ref`` of ``key`` over the seeds both rows have, or None without any.

    {"n", "seeds", "diffs", "mean_diff", "ci_low", "ci_high", "p"}; with n < 2 the interval and p
    are None (one pair has no spread); with n >= 2 they are ttest_rel's, except when every pair differs
    by the same amount: the interval is that point and p is None (the t statistic is undefined).
    """
    if key not in row or key not in ref:
        return None
    mine, theirs = dict(zip(row["seeds"], row[key])), dict(zip(ref["seeds"], ref[key]))
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    a = np.asarray([mine[s] for s in seeds], dtype=np.float64)
    b = np.asarray([theirs[s] for s in seeds], dtype=np.float64)
    diffs = a - b
    out = {"n": len(seeds), "seeds": seeds, "diffs": diffs.tolist(), "mean_diff": float(diffs.mean()),
           "ci_low": None, "ci_high": None, "p": None}
    if len(seeds) >= 2:
        from scipy.stats import ttest_rel

        if np.all(diffs == diffs[0]):
            out.update(ci_low=float(diffs[0]), ci_high=float(diffs[0]))
        else:
            test = ttest_rel(a, b)
            ci = test.confidence_interval(CONFIDENCE)
            out.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(test.pvalue))
    return out


def paired_by_name(rows, name, ref, key="mAP"):
    """``paired`` of the rows named ``name`` and ``ref`` in ``rows``; None when either has no row."""
    by_name = {r["name"]: r for r in rows}
    if name not in by_name or ref not in by_name:
        return None
    return paired(by_name[name], by_name[ref], key)


def paired_comparisons(rows, reference, keys=("mAP", "top1")):
    """Every variant other than ``reference`` against it: {"name", "reference", key: paired(...)}."""
    ref = next((r for r in rows if r["name"] == reference), None)
    if ref is None:
        return []
    out = []
    for r in rows:
        if r["name"] == reference:
            continue
        cmp = {"name": r["name"], "reference": reference}
        for key in keys:
            got = paired(r, ref, key)
            if got is not None:
                cmp[key] = got
        if len(cmp) > 2:
            out.append(cmp)
    return out


def all_comparisons(rows):
    """``paired_comparisons`` against each of REFERENCES, each pair once (tuned_static against equal,
    not also the reverse)."""
    out = []
    for ref in REFERENCES:
        done = {(c["name"], c["reference"]) for c in out}
        out += [c for c in paired_comparisons(rows, ref) if (ref, c["name"]) not in done]
    return out
