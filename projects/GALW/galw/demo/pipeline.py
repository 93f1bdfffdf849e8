"""The demo's five stages: SynthPS-PRW, the untrained floor, the colour-histogram gauge, both
GALW trainings of Algorithm 1 with evaluation, and the report with the headline result file."""
import json
import os
import platform
import shutil
import time

import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from galw.data.builtin import datasets_root
from galw.engine import Trainer, setup_logging
from galw.evaluation import evaluate_colour_baseline
from galw.visualization import plot_similarity_histograms, write_report
from galw.visualization.search_results import plot_search_results
from galw_core import train_two_phase

from .config import DEFAULT_CONFIG, PREFIX, build_cfg, save_config
from .dataset import prepare_dataset, register_demo_dataset
from .progress import Progress
from .summary import ROW_BASELINE, ROW_TRAINED, ROW_UNTRAINED, fmt, headline, write_demo_result, write_summary

__all__ = ["NUM_STAGES", "evaluate_baseline", "evaluate_untrained", "run_demo", "train_galw"]

NUM_STAGES = 5


def _search_json(output_dir):
    path = os.path.join(output_dir, "inference", f"search_{PREFIX}_gallery.json")
    with open(path) as f:
        return json.load(f)


def evaluate_untrained(cfg):
    """Search / detection metrics of a randomly initialised model (the floor)."""
    seed_all_rng(cfg.SEED)
    model = Trainer.build_model(cfg)
    Trainer.test(cfg, model)
    return _search_json(cfg.OUTPUT_DIR)


def evaluate_baseline(cfg, output_dir):
    """Search / detection metrics of GT boxes + colour histograms (no model) on the demo gallery."""
    evaluate_colour_baseline(cfg, cfg.DATASETS.TEST[0], os.path.join(output_dir, "inference"))
    with open(os.path.join(output_dir, "inference", f"search_{cfg.DATASETS.TEST[0]}.json")) as f:
        return json.load(f)


def train_galw(cfg):
    """Both trainings of Algorithm 1 through galw.engine.Trainer; phase two ends with evaluation.
    The full config is written beside the weights first (OUTPUT_DIR/config.yaml)."""
    save_config(cfg)
    seed_all_rng(cfg.SEED)
    train_two_phase(cfg, Trainer)
    return _search_json(cfg.OUTPUT_DIR)


def _plot_extras(report, report_dir, runs, num_queries, topk):
    """The untrained model's search pictures and the similarity histograms of the three models."""
    untrained = runs[ROW_UNTRAINED]
    if untrained["queries"]:
        name = os.path.join(report_dir, "search_results_untrained.png")
        plot_search_results(untrained["queries"][:num_queries], name, topk=topk, title="untrained model")
        report["figures"]["search_results_untrained"] = os.path.basename(name)
    histograms = {row: run["similarity_histogram"] for row, run in runs.items() if run.get("similarity_histogram")}
    if histograms:
        name = os.path.join(report_dir, "similarity_histograms.png")
        plot_similarity_histograms(histograms, name)
        report["figures"]["similarity_histograms"] = os.path.basename(name)


def run_demo(out="output/demo", report_dir=None, data_root=None, size="default", seed=0,
             config_file=DEFAULT_CONFIG, opts=(), num_queries=4, topk=5, results_root=None):
    """The whole demo; returns the summary dict (also written as report/demo_summary.{json,md}).

    The headline figures go to ``results/demo/<size>_seed<seed>.json`` (``results_root``, when
    given, instead of the repository's results folder); the summary names it as ``result_file``.
    """
    progress = Progress(NUM_STAGES)
    report_dir = report_dir or os.path.join(out, "report")
    data_root = data_root or os.path.join(datasets_root(), "SynthPS-PRW")
    untrained_dir, galw_dir = os.path.join(out, "untrained"), os.path.join(out, "galw")
    baseline_dir = os.path.join(out, "colour_baseline")
    for d in (untrained_dir, baseline_dir, galw_dir, report_dir):  # the demo's own folders: every run starts clean
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    setup_logging(out)
    setup_logger(out, name="train_net")
    load_start = os.getloadavg()
    print(f"GALW demo: {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}, "
          f"load average {load_start[0]:.2f}; outputs in {out}", flush=True)

    with progress.stage(1, f"SynthPS-PRW dataset ({size}, seed {seed}) in {data_root}"):
        data_state = prepare_dataset(data_root, size, seed)
        register_demo_dataset(data_root)
    untrained_cfg = build_cfg(config_file, untrained_dir, seed, opts)
    galw_cfg = build_cfg(config_file, galw_dir, seed, opts)
    with progress.stage(2, "evaluate the UNTRAINED model (random init): the floor"):
        untrained = evaluate_untrained(untrained_cfg)
        base = headline(untrained)
        print(f"untrained: search mAP {fmt(base['mAP'])}, top-1 {fmt(base['top1'])}, "
              f"detection AP {fmt(base['detection_AP'])}", flush=True)
    with progress.stage(3, "hand-crafted baseline: GT boxes + HSV colour histograms of torso and legs"):
        baseline = evaluate_baseline(galw_cfg, baseline_dir)
        gauge = headline(baseline)
        print(f"colour baseline: search mAP {fmt(gauge['mAP'])}, top-1 {fmt(gauge['top1'])}", flush=True)
    g = galw_cfg.MODEL.GALW
    phase_one_iters = g.PROBE_EPOCHS * g.EPOCH_ITERS if g.PROBE_EPOCHS > 0 else galw_cfg.SOLVER.MAX_ITER
    with progress.stage(4, f"train ROI-AlignPS* with GALW: phase one ({phase_one_iters} it, records Gamma, "
                           f"groups {len(g.TASKS)} tasks into {g.NUM_GROUPS}), phase two "
                           f"({galw_cfg.SOLVER.MAX_ITER} it, RULWF per group), then evaluate"):
        trained = train_galw(galw_cfg)
        res = headline(trained)
        print(f"trained: search mAP {fmt(res['mAP'])}, top-1 {fmt(res['top1'])}, "
              f"detection AP {fmt(res['detection_AP'])}", flush=True)
    with progress.stage(5, f"report in {report_dir}"):
        report = write_report(galw_dir, report_dir, num_queries=num_queries, topk=topk)
        runs = {ROW_UNTRAINED: untrained, ROW_BASELINE: baseline, ROW_TRAINED: trained}
        _plot_extras(report, report_dir, runs, num_queries, topk)
        info = {
            "config_file": os.path.abspath(config_file), "opts": list(opts),
            "dataset": {"root": os.path.abspath(data_root), "size": size, "seed": seed, "state": data_state,
                        "num_queries": len(trained["queries"])},
            "phase_one_iters": phase_one_iters, "phase_two_iters": galw_cfg.SOLVER.MAX_ITER,
            "stage_seconds": dict(progress.times), "wall_time_s": time.time() - progress.start,
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "platform": platform.platform(), "load_start": [round(x, 2) for x in load_start],
                        "load_end": [round(x, 2) for x in os.getloadavg()]},
            "runs": {"untrained": os.path.abspath(untrained_dir), "colour_baseline": os.path.abspath(baseline_dir),
                     "galw": os.path.abspath(galw_dir)},
        }
        summary = write_summary(report_dir, untrained, baseline, trained, report, info)
    summary["wall_time_s"] = time.time() - progress.start
    summary["stage_seconds"] = dict(progress.times)
    summary["result_file"] = write_demo_result(
        {"trained": trained, "untrained": untrained, "colour_baseline": baseline}, summary, root=results_root)
    with open(os.path.join(report_dir, "demo_summary.md")) as f:
        print(f.read(), flush=True)
    print(f"GALW demo finished in {progress.elapsed()}; report: {report_dir}; headline figures: {summary['result_file']}",
          flush=True)
    return summary
