"""The study's outputs: ``ablation.md`` (the answer, answer.py, then tables), ``ablation.json`` (the
same as data) and two figures.

Tables: mean ± std per variant, the paired differences against the references, the paper's claims
checked (claims.py), and how much each variant's mAP still moved over the last 20 % of its training
(convergence.py). Figures (plots.py):
``ablation_means.png`` (per-variant mean and spread) and ``ablation_curves.png`` (learning curves of
equal, tuned_static and galw_g4).
"""
import json
import os

from galw_core.files import atomic_write

from .answer import answer_markdown
from .claims import VERDICTS, check_claims, claims_table
from .convergence import convergence
from .spec import repo_relative
from .statistics import COLUMNS, CONFIDENCE, aggregate, all_comparisons

__all__ = ["FIGURES", "RUN_FIELDS", "comparison_table", "convergence_table", "groups_table", "markdown_table",
           "report_markdown", "search_table", "write_tables"]

#: A run's fields in ablation.json (curves, groups and trajectories stay in its own result file).
RUN_FIELDS = ("name", "seed", "mAP", "top1", "top10", "det_AP", "seconds", "source")
#: The figures write_tables makes: (file, what).
FIGURES = (("ablation_means.png", "mAP per variant, mean ± std over seeds"),
           ("ablation_curves.png", "mAP against iteration of equal, tuned_static and galw_g4"))


def _cell(mean, std):
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _num(x, fmt="{:+.2f}"):
    return "n/a" if x is None else fmt.format(x)


def markdown_table(rows):
    """Mean ± sample std of every column that some variant has, one line per variant."""
    columns = [(k, h) for k, h in COLUMNS if any(f"{k}_mean" in r for r in rows)]
    lines = ["| variant | paper tables | runs | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r[f"{k}_mean"], r[f"{k}_std"]) if f"{k}_mean" in r else "n/a" for k, _ in columns]
        lines.append(f"| {r['name']} | {', '.join(r['tables'])} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def search_table(search):
    """One line per search candidate: its weights on t1..t10, its seeds and validation mAP (mean)."""
    lines = ["| candidate | weights t1..t10 | seeds | validation mAP |", "|---|---|---|---|"]
    for c in search["candidates"]:
        weights = ", ".join(f"{w:g}" for w in c["weights"])
        score = "not run (yet)" if not c["mAP"] else ", ".join(f"{m:.2f}" for m in c["mAP"])
        if c["score"] is not None and len(c["mAP"]) > 1:
            score += f" (mean {c['score']:.2f})"
        best = " (chosen)" if c["name"] == search.get("best") else ""
        lines.append(f"| {c['name']}{best} | {weights} | {', '.join(map(str, c['seeds'])) or '-'} | {score} |")
    return "\n".join(lines) + "\n"


def comparison_table(comparisons):
    """Per compared pair and metric: n paired seeds, mean difference, its confidence interval, p."""
    keys = [k for k, _ in COLUMNS if any(k in c for c in comparisons)]
    header = {k: h.replace(" (%)", "") for k, h in COLUMNS}
    ci = f"{round(CONFIDENCE * 100)} % CI"
    lines = ["| variant | vs | " + " | ".join(f"n | Δ {header[k]} | {ci} | p" for k in keys) + " |",
             "|---|---|" + "---|---|---|---|" * len(keys)]
    for c in comparisons:
        cells = []
        for k in keys:
            d = c.get(k)
            if d is None:
                cells += ["0", "n/a", "n/a", "n/a"]
                continue
            interval = "n/a" if d["ci_low"] is None else f"[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            cells += [str(d["n"]), f"{d['mean_diff']:+.2f}", interval, _num(d["p"], "{:.2g}")]
        lines.append(f"| {c['name']} | {c['reference']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def convergence_table(conv):
    """Per variant: the worst seed's mAP range over the window, the largest |drift| of any seed, converged or not."""
    lines = ["| variant | worst seed | mAP range in window | max abs drift (any seed) | all seeds < "
             f"{conv['threshold']:g} point |", "|---|---|---|---|---|"]
    for v in conv["variants"]:
        flag = {True: "yes", False: "**no**", None: "n/a (curve too short)"}[v["converged"]]
        lines.append(f"| {v['name']} | {v['worst_seed'] if v['worst_seed'] is not None else 'n/a'} | "
                     f"{_num(v['worst_range'], '{:.2f}')} | {_num(v['max_abs_drift'], '{:.2f}')} | {flag} |")
    return "\n".join(lines) + "\n"


def _learns_groups(result):
    opts = [str(o) for o in result.get("opts") or []]
    return bool(result.get("groups")) and any(
        k == "MODEL.GALW.GROUPING" and v == "galw" for k, v in zip(opts, opts[1:]))


def groups_table(results):
    """Per variant whose groups GALW learns (``MODEL.GALW.GROUPING galw`` in its opts), each distinct
    grouping its runs trained with, the seeds that found it and their mAP: the outcome of such a run
    rests on the grouping its probing found. Empty without such runs."""
    found = {}
    for r in results:
        if _learns_groups(r):
            grouping = tuple(sorted((tuple(sorted(g)) for g in r["groups"]["groups"]), key=lambda g: (len(g), g)))
            found.setdefault((r["name"], grouping), []).append(r)
    if not found:
        return ""
    lines = ["| variant | groups | seeds | mAP | mean mAP |", "|---|---|---|---|---|"]
    for (name, grouping), runs in found.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        groups = " ".join("{" + ", ".join(g) + "}" for g in grouping)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        values = ", ".join(f"{r['mAP']:.2f}" for r in runs)
        lines.append(f"| {name} | {groups} | {seeds} | {values} | {sum(r['mAP'] for r in runs) / len(runs):.2f} |")
    return "\n".join(lines) + "\n"


def _write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _figures(rows, results, out_root):
    """The figures that have data, as {file: what}; plotting happens here only."""
    from .plots import plot_learning_curves, plot_variant_means

    made = {}
    if any("mAP" in r for r in rows):
        plot_variant_means(rows, os.path.join(out_root, FIGURES[0][0]))
        made[FIGURES[0][0]] = FIGURES[0][1]
    if any(r.get("curve") for r in results):
        try:
            plot_learning_curves(results, os.path.join(out_root, FIGURES[1][0]))
            made[FIGURES[1][0]] = FIGURES[1][1]
        except ValueError:  # none of the curve variants has finished yet
            pass
    return made


def report_markdown(spec, outcome, made=None):
    """The report's Markdown body (no title): the tables and notes of ``outcome``, the figures ``made``
    ({file: what}) as images; returns (markdown, {"rows", "comparisons", "claims", "convergence"})."""
    results = outcome["results"]
    rows = aggregate(spec, results)
    note = "Mean ± sample standard deviation (ddof=1) over seeds; a single run shows its value only.\n"
    if outcome["failed"]:
        note += f"Failed or skipped runs (not in the table): {len(outcome['failed'])}, see ablation.json.\n"
    if outcome.get("not_run"):
        seeds = {}
        for r in outcome["not_run"]:
            seeds.setdefault(r["name"], []).append(str(r["seed"]))
        note += (f"Not run (yet): {len(outcome['not_run'])}: "
                 + "; ".join(f"{n} seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for n, s in seeds.items()) + ".\n")
    comparisons = all_comparisons(rows)
    conv = convergence(spec, results)
    pending = [*outcome.get("not_run", []), *outcome["failed"]]  # planned runs without a result file
    planned = {r["name"] for r in results} | {r["name"] for r in pending}
    checked = [c for c in check_claims(spec, rows) if {c["variant"], c["reference"]} <= planned]
    md = f"Base config: `{spec['base_config']}`\n\n"
    if spec.get("data"):
        md += f"Data: `{spec['data']}`\n\n"
    if spec["common_opts"]:
        md += f"Common overrides: `{' '.join(str(o) for o in spec['common_opts'])}`\n\n"
    answer = answer_markdown(rows, checked, conv, pending)
    md += (answer + "\n" if answer else "") + (
        markdown_table(rows) if rows else "No variant has a finished run yet.\n") + "\n" + note
    s = outcome.get("search")
    where = f" on dataset `{s['dataset']}`" if s and s.get("dataset") else ""
    if s and s["best"] is not None:
        md += (f"\ntuned_static's weights: search candidate `{s['best']}` {s['weights']} (validation mAP "
               f"{s['score']:.2f})" + (f", from the search{where} (not repeated on this one)" if where else "") + ".\n")
    elif s:
        md += f"\ntuned_static's weights: the search{where} is not complete.\n"
    if s:
        md += (f"\nThe weight search{where} (validation mAP on the held-out training identities):\n\n"
               + search_table(s))
    if comparisons:
        md += ("\nPaired differences (variant - reference) over the seeds both have (same seed: same "
               f"initialisation and data order); mean, {round(CONFIDENCE * 100)} % confidence interval and "
               "p-value of the paired t-test (scipy.stats.ttest_rel).\n\n" + comparison_table(comparisons))
    measured = [c for c in checked if c["measured"] is not None]
    if measured:
        md += ("\nThe paper's claims: the sign of each mAP difference a paper table reports, against the paired "
               f"difference here. Verdicts: {'; '.join(VERDICTS)} (significant: the confidence interval "
               "excludes 0).\n\n" + claims_table(measured))
    if len(measured) < len(checked):
        md += (f"\nClaims waiting for runs of both variants: {len(checked) - len(measured)}: "
               + ", ".join(f"{c['variant']} vs {c['reference']}" for c in checked if c["measured"] is None) + ".\n")
    base_flag = {True: "yes", False: "no", None: "unknown"}[conv["baseline_converged"]]
    md += (f"\nConvergence: mAP over the last {round((1 - conv['tail_start']) * 100)} % of the iterations "
           "(range = max - min, drift = last - value at the window's start). "
           f"Baseline `{conv['baseline']}` converged on every seed: {base_flag}.\n\n"
           + convergence_table(conv))
    groups = groups_table(results)
    if groups:
        md += ("\nThe groups each GALW run trained with (from its probing, or regrouped from its source's), "
               "the seeds that found them and their mAP:\n\n" + groups)
    if made:
        md += "\n" + "".join(f"![{what}]({name})\n" for name, what in made.items())
    return md, {"rows": rows, "comparisons": comparisons, "claims": checked, "convergence": conv}


def write_tables(spec, outcome, out_root, figures=True):
    """Write ablation.md, ablation.json and (``figures``) the PNGs for ``outcome``; returns the rows."""
    results = outcome["results"]
    os.makedirs(out_root, exist_ok=True)
    made = _figures(aggregate(spec, results), results, out_root) if figures else {}
    body, parts = report_markdown(spec, outcome, made)
    _write_text(os.path.join(out_root, "ablation.md"), f"# Ablation: {repo_relative(spec['_path'])}\n\n" + body)
    runs = [{k: r[k] for k in RUN_FIELDS if k in r} for r in results]
    _write_text(os.path.join(out_root, "ablation.json"), json.dumps(
        {"spec": repo_relative(spec["_path"]), "base_config": spec["base_config"], "data": spec.get("data"),
         "variants": parts["rows"], "runs": runs, "failed": outcome["failed"], "not_run": outcome.get("not_run", []),
         "comparisons": parts["comparisons"], "claims": parts["claims"], "convergence": parts["convergence"],
         "search": outcome.get("search"), "figures": made}, indent=2))
    return parts["rows"]
