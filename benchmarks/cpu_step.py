#!/usr/bin/env python
"""CPU training-step time of ROI-AlignPS* with the stock kernels vs the CPU ones the project
picks by default: torchvision's deformable conv vs the grid_sample one
(MODEL.ALIGNPS.DEFORM_CONV_IMPL), oneDNN's convs in the ROI res5 vs unfold + matmul on its
small maps (MODEL.NAE.RES5_CONV_IMPL). Three arms built and timed in this one run,
interleaved in blocks so load changes hit all alike; then (``--profile N``) the default arm's
step under torch.profiler: the (op, input shapes) with the most self CPU time, the next hot spot, and
the rate of those whose FLOPs the profiler counts; they go into the result file too.

    PYTHONPATH=projects/GALW:. python benchmarks/cpu_step.py [--config-file CFG] [--rounds 3]
        [--block 3] [--profile 3] [KEY VALUE ...]

Default config: the demo's, roi_alignps_R18_synth_galw.yaml (batch 2, run with equal weighting).
Data: $DETECTRON2_DATASETS/SynthPS-PRW if present, else a tiny SynthPS-PRW written to a temporary
folder (the mapper resizes every frame to the config's scale, so step shapes are the demo's).
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(REPO, "projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_galw.yaml")
# arm -> (deformable conv, ROI res5 conv); "stock" is the step before the CPU kernels.
ARMS = {
    "stock": ("torchvision", "native"),
    "grid_sample": ("grid_sample", "native"),
    "default": ("auto", "auto"),
}


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
    for name, (deform, res5) in ARMS.items():
        torch.manual_seed(0)  # same initial weights in every arm
        opts = args.opts + ["MODEL.ALIGNPS.DEFORM_CONV_IMPL", deform, "MODEL.NAE.RES5_CONV_IMPL", res5]
        arms[name] = ConfigArm(argparse.Namespace(config_file=args.config_file, opts=opts), False)
    return arms


def profile(arm, steps, start, top):
    """The ``top`` (op, input shapes) of ``steps`` training steps (forward, backward, optimizer) by self
    CPU time, with the rate of the matrix products (the ops whose FLOPs torch.profiler counts and
    computes itself; a conv's FLOPs are counted on aten::conv2d, whose work runs in a child op): a rate
    near the machine's peak says the op is bound by its arithmetic, not by overhead. Unrounded."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        arm.run(start, steps)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = []
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        shapes = [list(x) for x in (e.input_shapes or []) if x]
        rate = e.flops / (e.self_cpu_time_total * 1e3) if e.flops and e.self_cpu_time_total else None
        rows.append({"op": e.key, "input shapes": str(shapes)[:80], "s/step": e.self_cpu_time_total / 1e6 / steps,
                     "share %": 100 * e.self_cpu_time_total / total, "calls/step": e.count / steps, "GFLOP/s": rate})
    print(f"\nprofile of the default arm, {steps} steps: {total / 1e6 / steps:.2f} s self CPU per step; "
          f"top {top} (op, input shapes) by self CPU time:")
    for r in rows:
        rate = "" if r["GFLOP/s"] is None else f"  {r['GFLOP/s']:6.1f} GFLOP/s"
        print(f"  {r['op']:30s} {r['s/step']:7.3f} s/step {r['share %']:5.1f} %  calls/step {r['calls/step']:5.1f}"
              f"{rate}  {r['input shapes']}")
    return {"steps": steps, "self CPU s/step": total / 1e6 / steps, "top": rows}


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
    from result_file import save

    with EventStorage(0):
        arms = build_arms(args)
        t = interleaved(arms, args.rounds, {k: args.block for k in arms}, args.warmup)
        load = os.getloadavg()
        print(f"config {os.path.relpath(args.config_file, REPO)}, batch {arms['stock'].trainer.cfg.SOLVER.IMS_PER_BATCH}, "
              f"torch threads {torch.get_num_threads()}, {args.rounds} rounds x {args.block} steps per arm, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for name, (deform, res5) in ARMS.items():
            print(f"  {name:12s} {t[name]:7.3f} s/step  (deformable conv {deform}, ROI res5 conv {res5})")
        print(f"step-time ratio stock / grid_sample: {t['stock'] / t['grid_sample']:.2f}x, "
              f"stock / default: {t['stock'] / t['default']:.2f}x")
        figures = {
            "settings": {"config": os.path.relpath(args.config_file, REPO), "rounds": args.rounds,
                         "block": args.block, "threads": torch.get_num_threads()},
            "rows": [{"arm": name, "deformable conv": deform, "ROI res5 conv": res5, "s/step": round(t[name], 3)}
                     for name, (deform, res5) in ARMS.items()],
            "step-time ratio stock / grid_sample": round(t["stock"] / t["grid_sample"], 3),
            "step-time ratio stock / default": round(t["stock"] / t["default"], 3),
        }
        if args.profile:
            found = profile(arms["default"], args.profile, args.warmup + args.rounds * args.block, args.top)
            digits = {"s/step": 4, "share %": 1, "calls/step": 1, "GFLOP/s": 1}
            figures["profile of the default arm"] = [
                {k: v if k not in digits or v is None else round(v, digits[k]) for k, v in r.items()} for r in found["top"]]
            figures["profiled steps"] = found["steps"]
            figures["profiled self CPU s/step"] = round(found["self CPU s/step"], 3)
        save("cpu_step", figures)


if __name__ == "__main__":
    main()
