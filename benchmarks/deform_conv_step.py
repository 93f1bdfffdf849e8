#!/usr/bin/env python
"""Training-step time of ROI-AlignPS* with torchvision's deformable conv vs the pure-PyTorch
grid_sample one (MODEL.ALIGNPS.DEFORM_CONV_IMPL), both arms built and timed in this one run,
interleaved in blocks so load changes hit both alike; then (``--profile N``) the fast arm's
step under torch.profiler, the ops with the most self CPU time: the next hot spot.

    PYTHONPATH=projects/GALW:. python benchmarks/deform_conv_step.py [--config-file CFG] [--rounds 3]
        [--block 3] [--profile 3] [KEY VALUE ...]

Default config: the demo's model, roi_alignps_R18_synth_cpu.yaml (batch 2, equal weighting).
Data: $DETECTRON2_DATASETS/SynthPS-PRW if present, else a tiny SynthPS-PRW written to a temporary
folder (the mapper resizes every frame to the config's scale, so step shapes are the demo's).
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(REPO, "projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_cpu.yaml")
IMPLS = ("torchvision", "grid_sample")


def _ensure_data():
    """Point $DETECTRON2_DATASETS at a root holding SynthPS-PRW (before galw registers datasets)."""
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    if os.path.isdir(os.path.join(root, "SynthPS-PRW")):
        return root
    root = tempfile.mkdtemp(prefix="galw_bench_data_")
    os.environ["DETECTRON2_DATASETS"] = root
    from galw.data.synthetic import generate

    generate("prw", os.path.join(root, "SynthPS-PRW"), seed=0, size="tiny")
    return root


def build_arms(args):
    import torch

    sys.path.insert(0, HERE)
    from galw_overhead import ConfigArm

    arms = {}
    for impl in IMPLS:
        torch.manual_seed(0)  # same initial weights in both arms
        arms[impl] = ConfigArm(argparse.Namespace(config_file=args.config_file,
                                                  opts=args.opts + ["MODEL.ALIGNPS.DEFORM_CONV_IMPL", impl]), False)
    return arms


def profile(arm, steps, start, top):
    """Self-CPU-time table of ``steps`` training steps (forward, backward, optimizer)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        arm.run(start, steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\nprofile of the grid_sample arm, {steps} steps: {total / 1e6 / steps:.2f} s self CPU per step; "
          f"top {top} ops by self CPU time:")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        print(f"  {e.key:45s} {e.self_cpu_time_total / 1e6 / steps:7.3f} s/step  {100 * e.self_cpu_time_total / total:5.1f} %"
              f"  calls/step {e.count / steps:.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--block", type=int, default=3, help="steps per arm per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps of the fast arm (0: none)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    _ensure_data()

    import galw  # noqa: F401  (before detectron2)
    import torch
    from detectron2.utils.events import EventStorage

    sys.path.insert(0, HERE)
    from galw_overhead import interleaved

    with EventStorage(0):
        arms = build_arms(args)
        t = interleaved(arms, args.rounds, {k: args.block for k in arms}, args.warmup)
        load = os.getloadavg()
        print(f"config {os.path.relpath(args.config_file, REPO)}, batch {arms['torchvision'].trainer.cfg.SOLVER.IMS_PER_BATCH}, "
              f"torch threads {torch.get_num_threads()}, {args.rounds} rounds x {args.block} steps per arm, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for k, v in t.items():
            print(f"  {k:12s} {v:7.3f} s/step")
        print(f"step-time ratio torchvision / grid_sample: {t['torchvision'] / t['grid_sample']:.2f}x")
        if args.profile:
            profile(arms["grid_sample"], args.profile, args.warmup + args.rounds * args.block, args.top)


if __name__ == "__main__":
    main()
