#!/usr/bin/env python
"""The first command to run: GALW end to end on the synthetic benchmark, on CPU (`make demo`).

Stages: (1) write SynthPS-PRW (reused when its stamp says same seed and size), (2) evaluate an
UNTRAINED ROI-AlignPS* (random init): the floor, (3) evaluate a hand-crafted baseline through the
same evaluator, GT boxes as detections and HSV colour histograms of torso and legs as embeddings
(galw.evaluation.colour_baseline): a gauge of how hard the gallery is for appearance alone,
(4) train ROI-AlignPS* (R-18) with GALW, both trainings of Algorithm 1 through
galw.engine.Trainer (phase one records Gamma and groups the 10 tasks, phase two trains from the
same initial weights with RULWF per group) and evaluate it on the synthetic gallery, (5) write
the report folder (Fig. 3 gradient curves, s* dendrogram and groups, sigma/weight curves, top-k
search pictures, similarity of true matches vs other people per model) and a summary that puts
the trained model's mAP / top-1 between the untrained model's and the colour baseline's.

    python tools/demo.py [--out output/demo] [--report DIR] [--size default] [--seed 0] [KEY VALUE ...]
"""
import argparse
import json
import os
import platform
import shutil
import time

import galw  # noqa: F401  (before any detectron2 import)
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from galw import add_galw_config
from galw_core import train_two_phase
from galw.data import register_person_search
from galw.data.builtin import datasets_root
from galw.data.synthetic import SIZES, generate
from galw.engine import Trainer, setup_logging
from galw.evaluation import evaluate_colour_baseline
from galw.visualization import plot_similarity_histograms, write_report
from galw.visualization.search_results import plot_search_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIG = os.path.join(ROOT, "projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_galw.yaml")
#: Written into the dataset root after generation; a later demo reuses the data only if it matches.
STAMP = "synthps_demo_stamp.json"
#: Dataset names the demo registers for its root (whatever $DETECTRON2_DATASETS says).
PREFIX = "demo_synth_prw"
NUM_STAGES = 5


class Progress:
    """Numbered stages with the elapsed time since the demo started."""

    def __init__(self, total):
        self.total, self.start, self.times = total, time.time(), {}

    def elapsed(self):
        return time.strftime("%H:%M:%S", time.gmtime(time.time() - self.start))

    def stage(self, number, title):
        return _Stage(self, number, title)


class _Stage:
    def __init__(self, progress, number, title):
        self.p, self.number, self.title = progress, number, title

    def __enter__(self):
        self.t0 = time.time()
        print(f"\n=== [demo {self.number}/{self.p.total}] {self.title}  (elapsed {self.p.elapsed()}) ===", flush=True)
        return self

    def __exit__(self, exc_type, *_):
        seconds = time.time() - self.t0
        self.p.times[self.title] = round(seconds, 1)
        status = "failed" if exc_type else "done"
        print(f"=== [demo {self.number}/{self.p.total}] {status} in {seconds:.0f} s  (elapsed {self.p.elapsed()}) ===",
              flush=True)


def prepare_dataset(root, size, seed):
    """Write SynthPS-PRW under ``root`` unless the stamp there says the same size and seed."""
    want = {"layout": "prw", "size": size, "seed": seed}
    stamp_path = os.path.join(root, STAMP)
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            have = json.load(f)
        if have == want:
            print(f"SynthPS-PRW ({size}, seed {seed}) already in {root}: reused", flush=True)
            return "reused"
        print(f"{root} holds SynthPS {have}, not {want}: writing it again", flush=True)
        shutil.rmtree(root)
    elif os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} exists but has no {STAMP} (not written by the demo): remove it or pass another --data-root"
        )
    counts = generate("prw", root, seed=seed, size=size)
    with open(stamp_path, "w") as f:
        json.dump(want, f)
    print(f"SynthPS-PRW ({size}, seed {seed}) written to {root}: {counts}", flush=True)
    return "generated"


def register_demo_dataset(root):
    """(Re)register ``demo_synth_prw_{train,gallery,query}`` at ``root``."""
    for split in ("train", "gallery", "query"):
        name = f"{PREFIX}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_person_search(PREFIX, "prw", root=root)


#: Config keys the demo sets itself (its dataset and run folders): an override of one is an error.
DEMO_OWNED_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "OUTPUT_DIR")


def build_cfg(config_file, output_dir, seed, opts):
    """The demo's config: ``seed`` as the training seed unless ``opts`` set SEED (overrides come last)."""
    owned = [k for k in list(opts)[::2] if k in DEMO_OWNED_KEYS]
    if owned:
        raise ValueError(f"tools/demo.py sets {', '.join(owned)} itself (its dataset and --out); "
                         "remove the override, or run train_net.py for another dataset or folder.")
    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.SEED = seed
    cfg.merge_from_list(list(opts))
    cfg.DATASETS.TRAIN = (f"{PREFIX}_train",)
    cfg.DATASETS.TEST = (f"{PREFIX}_gallery",)
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


def _search_json(output_dir):
    path = os.path.join(output_dir, "inference", f"search_{PREFIX}_gallery.json")
    with open(path) as f:
        return json.load(f)


def _headline(search_json):
    """Headline metrics of a search JSON, with the mean similarity of true matches and of others."""
    metrics, hist = search_json["metrics"], search_json.get("similarity_histogram") or {}
    search, det = metrics.get("search", {}), metrics.get("detection", {})
    return {
        "mAP": search.get("mAP"), "top1": search.get("top1"), "top5": search.get("top5"),
        "top10": search.get("top10"), "detection_AP": det.get("AP"), "detection_recall": det.get("recall"),
        "similarity_match": hist.get("mean_positive"), "similarity_other": hist.get("mean_negative"),
    }


def evaluate_untrained(cfg):
    """Search / detection metrics of a randomly initialised model (the baseline)."""
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
    """Both trainings of Algorithm 1 through galw.engine.Trainer; phase two ends with evaluation."""
    seed_all_rng(cfg.SEED)
    train_two_phase(cfg, Trainer)
    return _search_json(cfg.OUTPUT_DIR)


def _fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def _fmt3(v):
    return "n/a" if v is None else f"{v:.3f}"


ROW_UNTRAINED = "untrained (random init)"
ROW_BASELINE = "colour histograms on GT boxes (no learning)"
ROW_TRAINED = "ROI-AlignPS* + GALW (trained)"


def write_summary(report_dir, untrained, baseline, trained, report, info):
    rows = {ROW_UNTRAINED: _headline(untrained), ROW_BASELINE: _headline(baseline), ROW_TRAINED: _headline(trained)}
    groups = report.get("groups", {})
    summary = dict(info, results=rows, groups=groups.get("groups"), s_star=groups.get("s_star"),
                   final_sigma=report.get("final_sigma"), final_weight=report.get("final_weight"),
                   figures=report.get("figures"), skipped=report.get("skipped"))
    with open(os.path.join(report_dir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    lines = [
        "# GALW demo: ROI-AlignPS* (R-18) on SynthPS-PRW, CPU", "",
        f"Dataset: SynthPS-PRW `{info['dataset']['size']}` (seed {info['dataset']['seed']}), "
        f"{info['dataset']['num_queries']} queries; config `{os.path.relpath(info['config_file'], ROOT)}`; "
        f"phase one {info['phase_one_iters']} iterations, phase two {info['phase_two_iters']}.", "",
        "The untrained model is the floor; the colour baseline (GT boxes as detections, HSV histograms of "
        "torso and legs as embeddings, same evaluator) gauges how hard the gallery is for appearance alone.", "",
        "| model | search mAP | top-1 | top-5 | top-10 | detection AP | recall | similarity: true match | "
        "other people |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {_fmt(r['mAP'])} | {_fmt(r['top1'])} | {_fmt(r['top5'])} | {_fmt(r['top10'])} "
                     f"| {_fmt(r['detection_AP'])} | {_fmt(r['detection_recall'])} "
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


def run_demo(out="output/demo", report_dir=None, data_root=None, size="default", seed=0,
             config_file=DEFAULT_CONFIG, opts=(), num_queries=4, topk=5):
    """The whole demo; returns the summary dict (also written as report/demo_summary.{json,md})."""
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
        base = _headline(untrained)
        print(f"untrained: search mAP {_fmt(base['mAP'])}, top-1 {_fmt(base['top1'])}, "
              f"detection AP {_fmt(base['detection_AP'])}", flush=True)
    with progress.stage(3, "hand-crafted baseline: GT boxes + HSV colour histograms of torso and legs"):
        baseline = evaluate_baseline(galw_cfg, baseline_dir)
        gauge = _headline(baseline)
        print(f"colour baseline: search mAP {_fmt(gauge['mAP'])}, top-1 {_fmt(gauge['top1'])}", flush=True)
    g = galw_cfg.MODEL.GALW
    phase_one_iters = g.PROBE_EPOCHS * g.EPOCH_ITERS if g.PROBE_EPOCHS > 0 else galw_cfg.SOLVER.MAX_ITER
    with progress.stage(4, f"train ROI-AlignPS* with GALW: phase one ({phase_one_iters} it, records Gamma, "
                           f"groups {len(g.TASKS)} tasks into {g.NUM_GROUPS}), phase two "
                           f"({galw_cfg.SOLVER.MAX_ITER} it, RULWF per group), then evaluate"):
        trained = train_galw(galw_cfg)
        res = _headline(trained)
        print(f"trained: search mAP {_fmt(res['mAP'])}, top-1 {_fmt(res['top1'])}, "
              f"detection AP {_fmt(res['detection_AP'])}", flush=True)
    with progress.stage(5, f"report in {report_dir}"):
        report = write_report(galw_dir, report_dir, num_queries=num_queries, topk=topk)
        if untrained["queries"]:
            name = os.path.join(report_dir, "search_results_untrained.png")
            plot_search_results(untrained["queries"][:num_queries], name, topk=topk, title="untrained model")
            report["figures"]["search_results_untrained"] = os.path.basename(name)
        histograms = {name: run["similarity_histogram"] for name, run in
                      ((ROW_UNTRAINED, untrained), (ROW_BASELINE, baseline), (ROW_TRAINED, trained))
                      if run.get("similarity_histogram")}
        if histograms:
            name = os.path.join(report_dir, "similarity_histograms.png")
            plot_similarity_histograms(histograms, name)
            report["figures"]["similarity_histograms"] = os.path.basename(name)
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
    print(open(os.path.join(report_dir, "demo_summary.md")).read(), flush=True)
    print(f"GALW demo finished in {progress.elapsed()}; report: {report_dir}", flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/demo", help="demo folder (runs: untrained/, galw/)")
    parser.add_argument("--report", default=None, help="report folder (default OUT/report)")
    parser.add_argument("--data-root", default=None, help="SynthPS-PRW root (default $DETECTRON2_DATASETS/SynthPS-PRW)")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="SynthPS size")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed, and training seed unless the overrides set SEED")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--num-queries", type=int, default=4, help="queries in the search pictures")
    parser.add_argument("--topk", type=int, default=5, help="gallery matches per query in the pictures")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    return run_demo(args.out, args.report, args.data_root, args.size, args.seed, args.config_file, args.opts,
                    args.num_queries, args.topk)


if __name__ == "__main__":
    main()
