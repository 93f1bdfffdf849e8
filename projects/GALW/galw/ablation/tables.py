"""The study's outputs: ``OUT/ablation.md`` (per-variant table and comparisons) and ``OUT/ablation.json``."""
import json
import os

from galw_core.files import atomic_write

from .statistics import COLUMNS, aggregate, all_comparisons

__all__ = ["RUN_FIELDS", "comparison_table", "markdown_table", "write_tables"]

#: A run's fields in ablation.json (curves, groups and trajectories stay in its own result file).
RUN_FIELDS = ("name", "seed", "mAP", "top1", "top10", "det_AP", "seconds", "source")


def _cell(mean, std):
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows):
    """Mean ± sample std of every column that some variant has, one line per variant."""
    columns = [(k, h) for k, h in COLUMNS if any(f"{k}_mean" in r for r in rows)]
    lines = ["| variant | paper tables | runs | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r[f"{k}_mean"], r[f"{k}_std"]) if f"{k}_mean" in r else "n/a" for k, _ in columns]
        lines.append(f"| {r['name']} | {', '.join(r['tables'])} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(comparisons):
    """Difference, Welch's p and whether the seed ranges are apart, per compared pair and metric."""
    keys = [k for k, _ in COLUMNS if any(k in c for c in comparisons)]
    header = {k: h.replace(" (%)", "") for k, h in COLUMNS}
    lines = ["| variant | vs | " + " | ".join(f"Δ {header[k]} | Welch p | seed ranges apart" for k in keys) + " |",
             "|---|---|" + "---|---|---|" * len(keys)]
    for c in comparisons:
        cells = []
        for k in keys:
            d = c.get(k)
            cells += ["n/a"] * 3 if d is None else [f"{d['diff']:+.2f}", f"{d['welch_p']:.2g}",
                                                    "**yes**" if d["apart"] else "no"]
        lines.append(f"| {c['name']} | {c['reference']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_tables(spec, outcome, out_root):
    """Write ablation.md and ablation.json for ``outcome`` (run_ablation's or finished_runs'); returns the rows."""
    rows = aggregate(spec, outcome["results"])
    os.makedirs(out_root, exist_ok=True)
    note = "Mean ± sample standard deviation (ddof=1) over seeds; a single run shows its value only.\n"
    if outcome["failed"]:
        note += f"Failed or skipped runs (not in the table): {len(outcome['failed'])}, see ablation.json.\n"
    if outcome.get("not_run"):
        note += (f"Not run (yet): {len(outcome['not_run'])}: "
                 + ", ".join(f"{r['name']}/seed{r['seed']}" for r in outcome["not_run"]) + ".\n")
    comparisons = all_comparisons(rows)
    md = f"# Ablation: {spec['_path']}\n\nBase config: `{spec['base_config']}`\n\n"
    if spec["common_opts"]:
        md += f"Common overrides: `{' '.join(str(o) for o in spec['common_opts'])}`\n\n"
    md += markdown_table(rows) + "\n" + note
    if comparisons:
        md += ("\nDifferences of means; Welch's t-test over the seeds; \"apart\": every run of one variant "
               "above every run of the other (a difference beyond the seed-to-seed spread).\n\n"
               + comparison_table(comparisons))
    _write_text(os.path.join(out_root, "ablation.md"), md)
    runs = [{k: r[k] for k in RUN_FIELDS if k in r} for r in outcome["results"]]
    _write_text(os.path.join(out_root, "ablation.json"), json.dumps(
        {"spec": spec["_path"], "base_config": spec["base_config"], "variants": rows, "runs": runs,
         "failed": outcome["failed"], "not_run": outcome.get("not_run", []), "comparisons": comparisons}, indent=2))
    return rows
