"""The study's answer on one dataset, in a few lines rendered from the numbers: does GALW beat the
static weightings once each is trained on the same schedule? The three paired mAP comparisons the
question rests on, the count of the paper's claims by verdict, and whether those variants converged.

A line is marked provisional while a planned run of one of its variants has no result file (not run
yet, or failed), so a partial study never reads as the answer.
"""
from .claims import VERDICTS
from .statistics import CONFIDENCE, paired_by_name

__all__ = ["ANSWER_PAIRS", "answer_markdown", "pair_verdict"]

#: (variant, reference): the comparisons the study's question is about, in the order they are shown.
ANSWER_PAIRS = (("galw_g4", "tuned_static"), ("galw_g4", "equal"), ("tuned_static", "equal"))


def pair_verdict(diff):
    """Words for a paired difference (statistics.paired): which is higher when the interval excludes 0;
    none when every pair differs by the same amount (the t-test is undefined without spread), unless
    that amount is 0 (claims.VERDICTS's "no difference" alike)."""
    if diff is None or diff["ci_low"] is None:
        return "n/a (fewer than 2 paired seeds)"
    if diff["ci_low"] == diff["ci_high"]:
        return VERDICTS[4] if diff["mean_diff"] == 0 else VERDICTS[7]
    if diff["ci_low"] > 0:
        return "higher, significant"
    if diff["ci_high"] < 0:
        return "lower, significant"
    return "no significant difference"


def _pair_line(rows, name, ref, waiting):
    diff = paired_by_name(rows, name, ref)
    if diff is None:
        return f"* `{name}` vs `{ref}`: no paired seeds yet."
    spread = diff["ci_low"] is not None and diff["ci_low"] != diff["ci_high"]
    interval = "" if not spread else (
        f", {round(CONFIDENCE * 100)} % CI [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}], p {diff['p']:.3g}")
    late = {n: waiting[n] for n in (name, ref) if waiting.get(n)}
    note = "" if not late else " (provisional: " + "; ".join(
        f"{n} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))} without a result yet" for n, s in late.items()) + ")"
    return (f"* `{name}` vs `{ref}`: Δ mAP {diff['mean_diff']:+.2f}{interval}, {diff['n']} paired "
            f"seed{'s' if diff['n'] > 1 else ''}: "
            f"**{pair_verdict(diff)}**{note}.")


def answer_markdown(rows, claims, conv, not_run=()):
    """The answer block: ``rows`` (statistics.aggregate), ``claims`` (claims.check_claims of the pairs this
    dataset trains), ``conv`` (convergence.convergence), ``not_run`` ({"name", "seed"} of planned runs
    without a result file: not run yet or failed). A pair the dataset does not train is left out; empty
    when none of the answer's variants has a run."""
    names = {n for pair in ANSWER_PAIRS for n in pair}
    if not any(r["name"] in names for r in rows):
        return ""
    waiting = {}
    for r in not_run:
        waiting.setdefault(r["name"], []).append(r["seed"])
    md = ("The answer on this dataset (mAP on the test gallery; paired over seeds, same seed = same "
          "initialisation and data order):\n\n")
    planned = {r["name"] for r in rows} | set(waiting)
    md += "\n".join(_pair_line(rows, name, ref, waiting) for name, ref in ANSWER_PAIRS
                     if {name, ref} <= planned) + "\n"
    measured = [c for c in claims if c["measured"] is not None]
    if claims:
        counts = [f"{sum(c['verdict'] == v for c in measured)} {v}" for v in VERDICTS
                  if any(c["verdict"] == v for c in measured)]
        md += (f"* Paper claims measured here: {len(measured)} of {len(claims)}"
               + (": " + ", ".join(counts) if counts else "") + ".\n")
    conv_of = {v["name"]: v for v in conv["variants"]}
    flags = {True: "yes", False: "no", None: "n/a"}
    states = [f"`{n}` {flags[conv_of[n]['converged']]}" + (" (provisional)" if waiting.get(n) else "")
              for n in ("equal", "tuned_static", "galw_g4") if n in conv_of]
    if states:
        md += (f"* Converged (mAP moved less than {conv['threshold']:g} point over the last "
               f"{round((1 - conv['tail_start']) * 100)} % on every seed): " + ", ".join(states) + ".\n")
    return md
