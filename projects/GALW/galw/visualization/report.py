"""``write_report``: every figure a run's output folder allows, plus a metrics summary."""
import json
import logging
import os

from .gallery_size import plot_gallery_size_curve
from .gradients import gamma_series_from_groups, plot_gradient_magnitudes
from .dendrogram import plot_s_star_dendrogram
from .run_files import (
    find_groups_json,
    find_search_jsons,
    gallery_size_metrics,
    last_eval_record,
    load_groups_json,
    load_metrics_records,
    load_search_json,
    scalar_series,
)
from .search_results import plot_search_results
from .weights import plot_sigma_and_weights

logger = logging.getLogger(__name__)


def _last_values(series):
    return {name: ys[-1] for name, (_, ys) in sorted(series.items())}


def write_galw_plots(output_dir, report_dir, figures, skipped):
    """Gradient (Fig. 3), s*/dendrogram and sigma/weight plots; returns the summary parts."""
    summary = {}
    groups_path = find_groups_json(output_dir)
    metrics_path = os.path.join(output_dir, "metrics.json")
    records = load_metrics_records(metrics_path) if os.path.isfile(metrics_path) else []
    groups = load_groups_json(groups_path) if groups_path else None

    gamma_path = os.path.join(report_dir, "gradient_magnitudes.png")
    if groups is not None and any(groups["gamma_history"].values()):
        plot_gradient_magnitudes(gamma_series_from_groups(groups), gamma_path)
        figures["gradient_magnitudes"] = gamma_path
    elif scalar_series(records, "galw/gamma/"):
        plot_gradient_magnitudes(scalar_series(records, "galw/gamma/"), gamma_path, xlabel="iteration")
        figures["gradient_magnitudes"] = gamma_path
    else:
        skipped["gradient_magnitudes"] = "no gamma_history in galw_groups.json and no galw/gamma/* scalars"

    if groups is None:
        skipped["s_star_dendrogram"] = "no galw_groups.json"
    else:
        summary["groups"] = {k: groups[k] for k in ("groups", "num_groups", "linkage", "s_star")}
        summary["groups"]["file"] = groups_path
        summary["groups"]["slopes"] = groups.get("slopes")
        if groups["s_star"]:
            tree_path = os.path.join(report_dir, "s_star_dendrogram.png")
            tree = plot_s_star_dendrogram(groups, tree_path, source=groups_path)
            figures["s_star_dendrogram"] = tree_path
            summary["groups"]["matches_tree_cut"] = tree["matches_tree_cut"]
        else:
            skipped["s_star_dendrogram"] = f"{groups_path} has no s* (groups not clustered, e.g. GROUPING per_task)"

    if scalar_series(records, "galw/sigma/"):
        weights_path = os.path.join(report_dir, "sigma_and_weights.png")
        drawn = plot_sigma_and_weights(records, weights_path, source=metrics_path)
        figures["sigma_and_weights"] = weights_path
        summary["final_sigma"] = _last_values(drawn["sigma"])
        summary["final_group_weight"] = _last_values(drawn["group_weight"])
        summary["final_weight"] = _last_values(drawn["weight"])
    else:
        skipped["sigma_and_weights"] = "no galw/sigma/* scalars in metrics.json"

    eval_record = last_eval_record(records)
    if eval_record is not None:
        summary["last_eval"] = {k: v for k, v in eval_record.items() if "/" in k and "galw/" not in k}
        summary["last_eval"]["iteration"] = eval_record.get("iteration")
    return summary


def write_report(output_dir, report_dir, num_queries=4, topk=5):
    """Write every figure the run's files allow into ``report_dir`` and ``summary.json``.

    Reads OUTPUT_DIR/galw_groups.json, OUTPUT_DIR/metrics.json and
    OUTPUT_DIR/inference/search_*.json (whichever exist). Returns the summary dict;
    ``summary["skipped"]`` says which figures were not drawn and why.
    """
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"write_report: run folder {output_dir!r} does not exist")
    os.makedirs(report_dir, exist_ok=True)
    figures, skipped = {}, {}
    summary = {"output_dir": os.path.abspath(output_dir)}
    summary.update(write_galw_plots(output_dir, report_dir, figures, skipped))

    search_metrics = {}
    for path in find_search_jsons(output_dir):
        data = load_search_json(path)
        name = data["dataset"]
        search_metrics[name] = data["metrics"]
        if data["queries"]:
            out = os.path.join(report_dir, f"search_results_{name}.png")
            plot_search_results(data["queries"][:num_queries], out, topk=topk, title=name)
            figures[f"search_results_{name}"] = out
        else:
            skipped[f"search_results_{name}"] = f"{path} has no queries"
        try:
            points = gallery_size_metrics(data["metrics"], source=path)
        except ValueError:
            skipped[f"map_vs_gallery_size_{name}"] = "no search_TestG<N> metrics (not a CUHK-SYSU evaluation)"
            continue
        out = os.path.join(report_dir, f"map_vs_gallery_size_{name}.png")
        plot_gallery_size_curve([(name, points)], out)
        figures[f"map_vs_gallery_size_{name}"] = out
    if not search_metrics:
        skipped["search_results"] = "no inference/search_*.json"
    summary["search_metrics"] = search_metrics
    summary["figures"] = {k: os.path.relpath(v, report_dir) for k, v in figures.items()}
    summary["skipped"] = skipped
    for name, reason in skipped.items():
        logger.info("report: skipped %s (%s)", name, reason)
    with open(os.path.join(report_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    logger.info("report: %d figure(s) and summary.json in %s", len(figures), report_dir)
    return summary
