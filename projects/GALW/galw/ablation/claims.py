"""The paper's claims (Tables 1-5) checked on SynthPS: for each pair of variants a table of the paper
compares, the sign of the paper's mAP difference against the paired difference measured here.

A variant may carry ``paper: {mAP: .., top1: ..}`` (PRW, ResNet-50, the paper's row it stands for);
the spec's ``claims`` lists ``{table, variant, reference}``. A claim is *reproduced* when the measured
mean difference has the paper's sign and its confidence interval (statistics.paired) excludes 0,
*same direction, not significant* when only the sign agrees, *opposite* (significant or not) when it
differs, *no difference* when the measured mean is exactly 0; a claim needs two paired seeds that do
not all differ by the same amount (without spread the t-test is undefined).
SynthPS at CPU scale tests directions, not the paper's numbers.
"""
from .statistics import CONFIDENCE, paired_by_name

__all__ = ["MEASURED", "VERDICTS", "check_claims", "claims_table", "validate_claims"]

#: The verdicts, in the order the table explains them.
VERDICTS = ("reproduced", "same direction, not significant", "opposite, not significant", "opposite, significant",
            "no difference", "n/a (fewer than 2 paired seeds)", "n/a (no runs)",
            "n/a (every paired seed differs by the same amount: no spread to test)")
#: The verdicts that measured a direction: two paired seeds or more, with a spread.
MEASURED = VERDICTS[:5]


def validate_claims(spec, path):
    """Check every variant's ``paper`` figures and the spec's ``claims``; errors name the file and field."""
    names = [v["name"] for v in spec["variants"]]
    for v in spec["variants"]:
        paper = v.get("paper")
        if paper is None:
            continue
        if not isinstance(paper, dict) or not all(isinstance(paper.get(k), (int, float)) for k in ("mAP", "top1")):
            raise ValueError(f"{path}: variant {v['name']!r}: paper must be {{mAP: <number>, top1: <number>}}, "
                             f"got {paper!r}")
    claims = spec.setdefault("claims", [])
    if not isinstance(claims, list):
        raise ValueError(f"{path}: claims must be a list of {{table, variant, reference}}, got {claims!r}")
    for i, c in enumerate(claims):
        where = f"{path}: claims[{i}]"
        if not isinstance(c, dict) or set(c) != {"table", "variant", "reference"}:
            raise ValueError(f"{where}: expected {{table, variant, reference}}, got {c!r}")
        for key in ("variant", "reference"):
            if c[key] not in names:
                raise ValueError(f"{where}.{key}: no variant named {c[key]!r}")
            if "paper" not in next(v for v in spec["variants"] if v["name"] == c[key]):
                raise ValueError(f"{where}.{key}: variant {c[key]!r} has no paper figures to compare with")
        if c["variant"] == c["reference"]:
            raise ValueError(f"{where}: a variant compared with itself ({c['variant']!r})")
        papers = [next(v for v in spec["variants"] if v["name"] == c[k])["paper"]["mAP"] for k in ("variant", "reference")]
        if papers[0] == papers[1]:
            raise ValueError(f"{where}: the paper's mAP of {c['variant']!r} and {c['reference']!r} are equal "
                             f"({papers[0]}); a claim needs a direction")


def _verdict(paper_diff, measured):
    if measured is None:
        return VERDICTS[6]
    if measured["ci_low"] is None:
        return VERDICTS[5]
    if measured["mean_diff"] == 0:
        return VERDICTS[4]
    if measured["ci_low"] == measured["ci_high"]:  # the t-test is undefined without spread (answer.pair_verdict)
        return VERDICTS[7]
    same = (measured["mean_diff"] > 0) == (paper_diff > 0)
    significant = measured["ci_low"] > 0 or measured["ci_high"] < 0
    if same:
        return VERDICTS[0] if significant else VERDICTS[1]
    return VERDICTS[3] if significant else VERDICTS[2]


def check_claims(spec, rows, key="mAP"):
    """Per claim of the spec: {"table", "variant", "reference", "paper_diff", "measured", "verdict"};
    ``measured`` is statistics.paired on ``key`` (None when a variant has no runs yet)."""
    paper = {v["name"]: v["paper"] for v in spec["variants"] if "paper" in v}
    out = []
    for c in spec.get("claims", []):
        measured = paired_by_name(rows, c["variant"], c["reference"], key)
        paper_diff = float(paper[c["variant"]][key] - paper[c["reference"]][key])
        out.append({"table": str(c["table"]), "variant": c["variant"], "reference": c["reference"],
                    "paper_diff": paper_diff, "measured": measured, "verdict": _verdict(paper_diff, measured)})
    return out


def claims_table(checked):
    """One line per claim: the paper's difference, the measured one with its interval, the verdict."""
    ci = f"{round(CONFIDENCE * 100)} % CI"
    lines = [f"| paper table | variant | vs | paper Δ mAP | n | Δ mAP here | {ci} | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checked:
        m = c["measured"]
        n = "0" if m is None else str(m["n"])
        diff = "n/a" if m is None else f"{m['mean_diff']:+.2f}"
        interval = "n/a" if m is None or m["ci_low"] is None else f"[{m['ci_low']:+.2f}, {m['ci_high']:+.2f}]"
        lines.append(f"| {c['table']} | {c['variant']} | {c['reference']} | {c['paper_diff']:+.2f} | {n} | {diff} | "
                     f"{interval} | {c['verdict']} |")
    return "\n".join(lines) + "\n"
