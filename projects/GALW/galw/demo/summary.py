"""The demo's summary: the three models side by side (report/demo_summary.{json,md}) and its
headline figures as a result file (``galw.results.write_result("demo", ...)``)."""
import json
import os
import shlex

from galw.results import write_result

from .config import DEFAULT_CONFIG, REPO_ROOT

__all__ = ["ROW_BASELINE", "ROW_TRAINED", "ROW_UNTRAINED", "demo_command", "fmt", "headline", "result_data",
           "verdict", "write_demo_result", "write_summary"]

ROW_UNTRAINED = "untrained (random init)"
ROW_BASELINE = "colour histograms on GT boxes (no learning)"
ROW_TRAINED = "ROI-AlignPS* + GALW (trained)"
#: The models of the result file: (key, summary row).
MODELS = (("trained", ROW_TRAINED), ("untrained", ROW_UNTRAINED), ("colour_baseline", ROW_BASELINE))


def headline(search_json):
    """Headline metrics of a search JSON, with the mean similarity of true matches and of others."""
    metrics, hist = search_json["metrics"], search_json.get("similarity_histogram") or {}
    search, det = metrics.get("search", {}), metrics.get("detection", {})
    return {
        "mAP": search.get("mAP"), "top1": search.get("top1"), "top5": search.get("top5"),
        "top10": search.get("top10"), "detection_AP": det.get("AP"), "detection_recall": det.get("recall"),
        "similarity_match": hist.get("mean_positive"), "similarity_other": hist.get("mean_negative"),
    }


def fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def _fmt3(v):
    return "n/a" if v is None else f"{v:.3f}"


def verdict(trained, gauge):
    """One sentence a user reads first: does the trained model find people better than the colour
    gauge (same gallery, same evaluator)? Compared on search mAP, the headline metric."""
    t, g = trained.get("mAP"), gauge.get("mAP")
    if t is None or g is None:
        return "Verdict: n/a (a search mAP is missing)."
    word = "beats" if t >= g else "does not beat"
    return (f"Verdict: the trained model {word} the colour-histogram gauge: search mAP {fmt(t)} vs {fmt(g)} "
            f"({t - g:+.2f}), top-1 {fmt(trained.get('top1'))} vs {fmt(gauge.get('top1'))}.")


def write_summary(report_dir, untrained, baseline, trained, report, info):
    """Write report/demo_summary.json and .md (the table, the groups with s*, stage times); returns the summary."""
    rows = {ROW_UNTRAINED: headline(untrained), ROW_BASELINE: headline(baseline), ROW_TRAINED: headline(trained)}
    groups = report.get("groups", {})
    summary = dict(info, results=rows, groups=groups.get("groups"), s_star=groups.get("s_star"),
                   final_sigma=report.get("final_sigma"), final_weight=report.get("final_weight"),
                   figures=report.get("figures"), skipped=report.get("skipped"))
    with open(os.path.join(report_dir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    lines = [
        "# GALW demo: ROI-AlignPS* (R-18) on SynthPS-PRW, CPU", "",
        verdict(rows[ROW_TRAINED], rows[ROW_BASELINE]), "",
        f"Dataset: SynthPS-PRW `{info['dataset']['size']}` (seed {info['dataset']['seed']}), "
        f"{info['dataset']['num_queries']} queries; config `{os.path.relpath(info['config_file'], REPO_ROOT)}`; "
        f"phase one {info['phase_one_iters']} iterations, phase two {info['phase_two_iters']}.", "",
        "The untrained model is the floor; the colour baseline (GT boxes as detections, HSV histograms of "
        "torso and legs as embeddings, same evaluator) gauges how hard the gallery is for appearance alone.", "",
        "| model | search mAP | top-1 | top-5 | top-10 | detection AP | recall | similarity: true match | "
        "other people |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {fmt(r['mAP'])} | {fmt(r['top1'])} | {fmt(r['top5'])} | {fmt(r['top10'])} "
                     f"| {fmt(r['detection_AP'])} | {fmt(r['detection_recall'])} "
                     f"| {_fmt3(r['similarity_match'])} | {_fmt3(r['similarity_other'])} |")
    s_star = groups.get("s_star") or {}  # empty when the groups were not clustered (GROUPING per_task)
    source = "from phase one's Gamma trends" if s_star else "not clustered: no s*"
    lines += ["", f"GALW groups (G = {len(groups.get('groups') or [])}, {source}):", ""]
    for i, g in enumerate(groups.get("groups") or []):
        s = ", ".join(f"{t} (s*={s_star[t]:+.3f})" if t in s_star else t for t in g)
        lines.append(f"- g{i}: {s}")
    lines += ["", "Figures: " + ", ".join(f"`{v}`" for v in sorted((report.get("figures") or {}).values())), "",
              f"Wall time {info['wall_time_s']:.0f} s on {info['machine']['cpus']} CPU(s), "
              f"{info['machine']['torch_threads']} torch thread(s); load average at start "
              f"{info['machine']['load_start']}, at end {info['machine']['load_end']}.", ""]
    lines += [f"- {k}: {v:.0f} s" for k, v in info["stage_seconds"].items()]
    with open(os.path.join(report_dir, "demo_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


def result_data(runs, summary):
    """The result file's data: per model (trained, untrained, colour_baseline) its headline figures
    and the similarity distribution of true matches vs other people; the groups, schedule and wall time.

    ``runs``: {model key: its search JSON}; ``summary``: write_summary's dict.
    """
    models = {}
    for key, row in MODELS:
        hist = runs[key].get("similarity_histogram")
        similarity = None if hist is None else {
            "bin_edges": hist["bin_edges"], "true_match": hist["positive"], "other_people": hist["negative"],
            "mean_true_match": hist["mean_positive"], "mean_other_people": hist["mean_negative"]}
        models[key] = dict(summary["results"][row], similarity=similarity)
    return {"dataset": {k: summary["dataset"][k] for k in ("size", "seed", "num_queries")},
            "config_file": os.path.relpath(summary["config_file"], REPO_ROOT), "opts": summary["opts"],
            "phase_one_iters": summary["phase_one_iters"], "phase_two_iters": summary["phase_two_iters"],
            "models": models, "groups": summary["groups"], "s_star": summary["s_star"],
            "stage_seconds": summary["stage_seconds"], "wall_time_s": round(summary["wall_time_s"], 1)}


def demo_command(size, seed, config_file, opts):
    """The tools/demo.py command line that runs this demo again."""
    args = ["python", "tools/demo.py", "--size", size, "--seed", str(seed)]
    if os.path.abspath(config_file) != DEFAULT_CONFIG:
        args += ["--config-file", os.path.relpath(config_file, REPO_ROOT)]
    return shlex.join(args + [str(o) for o in opts])


def write_demo_result(runs, summary, root=None):
    """``results/demo/<size>_seed<seed>.json`` (under ``root`` when given); returns its path."""
    ds = summary["dataset"]
    return write_result("demo", f"{ds['size']}_seed{ds['seed']}", result_data(runs, summary), root=root,
                        command=demo_command(ds["size"], ds["seed"], summary["config_file"], summary["opts"]))
