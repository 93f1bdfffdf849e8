"""The study's conclusion across its datasets, rendered from the kept result files alone (the docs'
``<!-- results:ablation -->`` block): the answer's three comparisons on every dataset side by side,
each paper claim's verdict on every dataset that trains both of its variants, which claims keep
the paper's direction on all of them, and what the study costs (the runs' wall times). Marked
provisional while a planned run has no result file, so a partial study never reads as the conclusion.
"""
from galw.results import read_result

from .answer import ANSWER_PAIRS, pair_verdict
from .claims import MEASURED, VERDICTS
from .convergence import CONVERGED_POINTS, TAIL_START
from .report import SHIPPED_SPEC, committed_outcome, kept_files, label_dataset, planned_names
from .spec import load_spec
from .statistics import CONFIDENCE, paired_by_name
from .tables import report_markdown

__all__ = ["claim_summary", "conclusion_markdown", "dataset_reports"]

#: The variants whose convergence the conclusion states.
CONVERGENCE_OF = ("equal", "tuned_static", "galw_g4")


def dataset_reports(results_root, spec_path=SHIPPED_SPEC):
    """Per dataset of the spec, in its order: {"name", "kept", "planned", "variants" (the names it
    plans), "seconds" (each kept file's wall time, runner.run_one), "rows", "claims", "convergence"} from
    its kept files (rows, claims and convergence are empty without any)."""
    reports = []
    for data in load_spec(spec_path)["datasets"]:
        spec = load_spec(spec_path)  # label_dataset sets a loaded spec up for one dataset
        data = label_dataset(spec, data["name"])
        files, planned = kept_files(spec, data, results_root)
        parts = {"rows": [], "claims": [], "convergence": {"variants": []}}
        if files:
            parts = report_markdown(spec, committed_outcome(spec, data, results_root))[1]
        reports.append({"name": data["name"], "kept": len(files), "planned": planned,
                        "variants": planned_names(spec, data, results_root), "rows": parts["rows"],
                        "seconds": [read_result(p)["data"].get("seconds") or 0.0 for p in files],
                        "claims": parts["claims"], "convergence": parts["convergence"]})
    return reports


def _difference(diff):
    if diff is None:
        return "no paired seeds yet"
    if diff["ci_low"] is None:
        return f"{diff['mean_diff']:+.2f} (1 seed)"
    interval = "" if diff["ci_low"] == diff["ci_high"] else f" [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}]"
    return f"{diff['mean_diff']:+.2f}{interval}, {diff['n']} seeds: {pair_verdict(diff)}"


def _answer_cell(report, name, ref):
    if not {name, ref} <= report["variants"]:
        return "not trained here"
    return _difference(paired_by_name(report["rows"], name, ref))


def _time_cell(report):
    s = report["seconds"]
    return f"{sum(s) / len(s) / 60:.1f} min ({len(s)} files)" if s else "no runs yet"


def _cost(reports):
    """The hours the kept files took, and those the runs left need at their dataset's mean per run."""
    done = sum(sum(r["seconds"]) for r in reports) / 3600
    spent = f"Cost: the kept files took {done:.1f} h of training and evaluation (the sum of their runs' wall times)"
    runs_left = sum(r["planned"] - r["kept"] for r in reports)
    if not runs_left:  # the block's first line already says every planned run has its file
        return spent + ".\n"
    left = sum((r["planned"] - r["kept"]) * sum(r["seconds"]) / len(r["seconds"]) for r in reports if r["seconds"])
    unknown = [f"`{r['name']}`" for r in reports if not r["seconds"]]
    return (f"{spent}; the {runs_left} planned runs left need about {left / 3600:.1f} h more at their dataset's "
            f"mean per run" + (f" (and those of {', '.join(unknown)}, without a run to measure yet)" if unknown else "")
            + ".\n")


def _converged_cell(report):
    of = {v["name"]: v["converged"] for v in report["convergence"]["variants"]}
    words = {True: "yes", False: "no", None: "n/a"}
    states = [f"{n} {words[of[n]]}" for n in CONVERGENCE_OF if n in of]
    return ", ".join(states) if states else "no runs yet"


def claim_summary(reports):
    """Per claim of the spec (in its order): {"table", "variant", "reference", "paper_diff", "verdicts"
    ({dataset: verdict} where it measured a direction, claims.MEASURED), "status"}: "holds" (reproduced
    on every such dataset), "same direction" (the paper's sign on every one, not significant on one),
    "inconclusive" (the opposite sign or no difference on one, significant on none), "against" (the
    opposite sign, significant, on one) or "not measured"."""
    claims = {}
    for report in reports:
        for c in report["claims"]:
            entry = claims.setdefault((c["table"], c["variant"], c["reference"]), {
                "table": c["table"], "variant": c["variant"], "reference": c["reference"],
                "paper_diff": c["paper_diff"], "verdicts": {}})
            if c["verdict"] in MEASURED:
                entry["verdicts"][report["name"]] = c["verdict"]
    for entry in claims.values():
        verdicts = set(entry["verdicts"].values())
        if not verdicts:
            entry["status"] = "not measured"
        elif VERDICTS[3] in verdicts:
            entry["status"] = "against"
        elif verdicts & {VERDICTS[2], VERDICTS[4]}:
            entry["status"] = "inconclusive"
        elif verdicts == {VERDICTS[0]}:
            entry["status"] = "holds"
        else:
            entry["status"] = "same direction"
    return list(claims.values())


def _claim_cell(report, claim):
    if not {claim["variant"], claim["reference"]} <= report["variants"]:
        return "not trained here"
    c = next((c for c in report["claims"] if (c["table"], c["variant"], c["reference"])
              == (claim["table"], claim["variant"], claim["reference"])), None)
    if c is None or c["measured"] is None:
        return "no paired seeds yet"
    return f"{c['measured']['mean_diff']:+.2f}: {c['verdict']}"


def conclusion_markdown(results_root, spec_path=SHIPPED_SPEC):
    """The conclusion block from the kept files under ``results_root`` (one folder per dataset); None
    without any."""
    reports = dataset_reports(results_root, spec_path)
    kept, planned = sum(r["kept"] for r in reports), sum(r["planned"] for r in reports)
    if not kept:
        return None
    names = [r["name"] for r in reports]
    head = "| | " + " | ".join(f"`{n}`" for n in names) + " |\n|---|" + "---|" * len(names) + "\n"
    md = (f"**Provisional**: {kept} of {planned} planned result files exist; the conclusion holds once every "
          "one does.\n\n" if kept < planned else f"Every planned run has its result file ({planned}).\n\n")
    md += (f"Paired Δ mAP on the test gallery (same seed = same initialisation and data order), its "
           f"{round(CONFIDENCE * 100)} % confidence interval (scipy.stats.ttest_rel) and verdict, per dataset:\n\n"
           + head)
    for name, ref in ANSWER_PAIRS:
        md += f"| `{name}` vs `{ref}` | " + " | ".join(_answer_cell(r, name, ref) for r in reports) + " |\n"
    md += (f"| converged (mAP moved < {CONVERGED_POINTS:g} point over the last {round((1 - TAIL_START) * 100)} % "
           "on every seed) | " + " | ".join(_converged_cell(r) for r in reports) + " |\n")
    md += "| wall time per run (mean of its kept files) | " + " | ".join(_time_cell(r) for r in reports) + " |\n"
    md += "\n" + _cost(reports)
    claims = claim_summary(reports)
    md += ("\nThe paper's claims (its sign of Δ mAP between two of its rows), the paired Δ mAP and verdict "
           "on each dataset that trains both variants:\n\n"
           "| paper table | variant | vs | paper Δ mAP | " + " | ".join(f"`{n}`" for n in names) + " | on SynthPS |\n"
           "|---|---|---|---|" + "---|" * len(names) + "---|\n")
    for c in claims:
        md += (f"| {c['table']} | {c['variant']} | {c['reference']} | {c['paper_diff']:+.2f} | "
               + " | ".join(_claim_cell(r, c) for r in reports) + f" | {c['status']} |\n")
    md += "\n"
    for status, words in (("holds", "Reproduced (the paper's direction, significant, on every dataset that "
                                    "measures it)"),
                          ("same direction", "The paper's direction on every dataset that measures it, not "
                                             "significant on at least one"),
                          ("inconclusive", "Inconclusive (the opposite sign or no difference on at least one "
                                           "dataset, significant on none)"),
                          ("against", "Against the paper (the opposite sign, significant, on at least one dataset)"),
                          ("not measured", "Not measured yet (no dataset has 2 paired seeds with a spread)")):
        these = [f"Table {c['table']} `{c['variant']}` vs `{c['reference']}`" for c in claims if c["status"] == status]
        md += f"* {words}: {len(these)}" + (": " + "; ".join(these) if these else "") + ".\n"
    return md
