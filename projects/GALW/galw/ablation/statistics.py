"""Per-variant statistics over seeds, and which differences between variants exceed the seed spread."""
import numpy as np

__all__ = ["COLUMNS", "REFERENCES", "aggregate", "all_comparisons", "compare", "mean_std"]

#: Columns of the table: (result key, header); top-10 and detection AP only when every run has them.
COLUMNS = (("mAP", "mAP (%)"), ("top1", "top-1 (%)"), ("top10", "top-10 (%)"), ("det_AP", "detection AP (%)"))
#: Variants the others are compared with, when present: the plain sum and the paper's GALW.
REFERENCES = ("equal", "galw_g4")


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
        row = {"name": v["name"], "tables": v["tables"], "runs": len(mine), "seeds": [r["seed"] for r in mine]}
        for key, _ in COLUMNS:
            values = [r.get(key) for r in mine]
            if any(x is None for x in values):
                continue
            row[key] = values
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        rows.append(row)
    return rows


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
