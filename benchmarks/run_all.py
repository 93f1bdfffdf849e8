#!/usr/bin/env python
"""Run every benchmark of the project in one go and print their figures (``make bench``).

    python benchmarks/run_all.py [--scale quick|full] [--device cpu|cuda] [--amp] [--only NAME ...]

Each benchmark is its own script (run here as a subprocess with this checkout first on
PYTHONPATH); every ratio it prints is measured inside that one run. This runner streams
their output, then repeats the key lines in a summary with the machine and its load.

| name | script | measures |
|---|---|---|
| inference | inference_speed.py | ms per 1500x900 image: NAE, AlignPS, ROI-AlignPS* (R-50) vs torchvision's |
|  |  | fasterrcnn_resnet50_fpn |
| overhead_toy | galw_overhead.py | GALW step-time ratio over equal weighting, toy 6-task model, and the probe options |
| overhead_roi_alignps | galw_overhead.py --config-file | the same ratio on ROI-AlignPS* R-18 (synthetic, 10 tasks) |
| cpu_step | cpu_step.py | ROI-AlignPS* R-18 CPU step time, stock kernels vs the CPU ones (deformable conv, ROI res5 conv) |
| probe_allreduce | probe_allreduce.py | 2 processes: probe time with gradients all-reduced (rank-independent Gamma) vs norms |
| eval | eval_speed.py | evaluation seconds at real scale (PRW; CUHK-SYSU too at --scale full) |
| data_parse | data_parse.py | parse / cache seconds on full-size PRW fixtures (CUHK-SYSU too at --scale full) |
| alm | attribute_alm.py | ALM memory and time vs the direct formulation |

``--scale quick`` (default) keeps the whole run to minutes on a small CPU; ``full`` uses
each script's own defaults (more images, rounds and both datasets). ``--device cuda``
times inference and ROI-AlignPS* training on the GPU (``--amp``: autocast fp16 for
inference, AMPTrainer for training); evaluation, parsing, the toy and the ALM stay on CPU.
Benchmarks run with OMP_NUM_THREADS=1 unless the environment sets it (on a shared CPU two
threads mostly wait on each other: a ROI-AlignPS* R-18 step took 3.5 s with one thread and
12.9 s with two on a busy 2-core machine). Each benchmark writes its figures to
``results/benchmarks/<name>.json`` (``make results`` renders the docs' tables from them).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
ROI_ALIGNPS_SYNTH = "projects/GALW/configs/alignps/roi_alignps_R18_synth_cpu.yaml"
# Lines of each benchmark's output repeated in the summary.
SUMMARY_PATTERNS = {
    "inference": r"^device:|ms/image",
    "overhead_toy": r"^toy model|ms/step",
    "overhead_roi_alignps": r"^config|step-time ratio",
    "cpu_step": r"s/step|step-time ratio",
    "probe_allreduce": r"ratio|extra cost",
    "eval": r"^== |six-size sweep \(wall\)",
    "data_parse": r"parse|cache",
    "alm": r"^boxes=|ratio",
}


def benchmarks(args, data_root):
    """{name: argv} in run order, for the chosen scale and device."""
    quick = args.scale == "quick"
    py = [sys.executable]
    inference = py + [os.path.join(BENCH, "inference_speed.py"), "--device", args.device]
    inference += ["--num-images", "2", "--warmup", "1"] if quick else []
    inference += ["--amp"] if args.amp else []
    overhead_opts = [
        # the config's base (Base-ROI-AlignPS.yaml) lists the ten tasks; galw_overhead.py enables GALW
        # the config's own weighting is the baseline's fixed per-task grouping: probe and cluster instead
        "MODEL.GALW.GROUPING", "galw",
        "MODEL.DEVICE", args.device,
        # the tiny SynthPS-PRW has 5 iterations per epoch; a probe period must fit in an epoch
        "MODEL.GALW.EPOCH_ITERS", "1000",
    ]
    if args.amp:
        overhead_opts += ["SOLVER.AMP.ENABLED", "True"]
    return {
        "inference": inference,
        "overhead_toy": py + [os.path.join(BENCH, "galw_overhead.py")] + (["--rounds", "3"] if quick else []),
        # quick: a CPU step of this model takes seconds, so probe every 20 iterations (blocks of 20)
        # instead of the default 100; the summary projects the measured probe cost to the default.
        "overhead_roi_alignps": py + [os.path.join(BENCH, "galw_overhead.py"), "--config-file", ROI_ALIGNPS_SYNTH]
        + (["--rounds", "1", "--block", "20", "--warmup", "1"] if quick else ["--rounds", "3"]) + overhead_opts
        + (["MODEL.GALW.PROBE_PERIOD", "20"] if quick else []),
        "cpu_step": py + [os.path.join(BENCH, "cpu_step.py")]
        + (["--rounds", "1", "--block", "2"] if quick else ["--profile", "3"]) + ["MODEL.DEVICE", args.device],
        "probe_allreduce": py + [os.path.join(BENCH, "probe_allreduce.py")] + (["--rounds", "5"] if quick else []),
        "eval": py + [os.path.join(BENCH, "eval_speed.py"), "--dataset", "prw" if quick else "both"],
        "data_parse": py + [os.path.join(BENCH, "data_parse.py")] + (["--skip-cuhk"] if quick else []),
        "alm": py + [os.path.join(BENCH, "attribute_alm.py")] + (["--boxes", "10", "--repeats", "1"] if quick else []),
    }


def make_synthetic_data(root):
    """The ROI-AlignPS* overhead run trains on synth_prw_train: write a tiny SynthPS-PRW once."""
    out = os.path.join(root, "SynthPS-PRW")
    if not os.path.isdir(out):
        subprocess.run([sys.executable, "-m", "galw.data.synthetic", "--layout", "prw", "--out", out,
                        "--seed", "0", "--size", "tiny"], check=True, env=child_env(root), cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return root


def child_env(data_root):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "projects", "GALW"), REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["DETECTRON2_DATASETS"] = data_root
    # One thread unless told otherwise: on a shared CPU, two OpenMP threads wait on each other.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(name, argv, data_root):
    """Stream one benchmark's output; return (return code, seconds, output lines)."""
    print(f"\n######## {name}: {' '.join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in argv[1:])}",
          flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env(data_root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    return proc.wait(), time.perf_counter() - start, lines


def projected_overhead(lines, default_period=None):
    """A probe's cost in step-times from the measured ratio, and the ratio it implies at the
    default PROBE_PERIOD (a projection, printed as such)."""
    if default_period is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import galw
            from detectron2.config import get_cfg

        default_period = galw.add_galw_config(get_cfg()).MODEL.GALW.PROBE_PERIOD
    text = "\n".join(lines)
    ms = re.search(r"([\d.]+) ms/step equal, ([\d.]+) ms/step GALW", text)
    period = re.search(r"PROBE_PERIOD=(\d+)", text)
    if not (ms and period):
        return "projection: figures not found"
    equal, galw_ms, period = float(ms.group(1)), float(ms.group(2)), int(period.group(1))
    probe = (galw_ms - equal) * period / equal
    return (f"one probe costs {probe:.2f} step-times (measured at period {period}); projected ratio at the "
            f"default PROBE_PERIOD={default_period}: {1 + probe / default_period:.3f}")


def machine_line():
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    threads = child_env("")["OMP_NUM_THREADS"]
    return f"{os.cpu_count()} CPU cores, torch {torch.__version__} (benchmarks run with OMP_NUM_THREADS={threads}), {gpu}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["quick", "full"], default=os.environ.get("BENCH_SCALE", "quick"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast / AMPTrainer on CUDA")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"a subset of: {', '.join(SUMMARY_PATTERNS)}")
    parser.add_argument("--data-root", default="", help="where the tiny SynthPS-PRW is written (default: a temp dir)")
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp and args.device != "cuda":
        parser.error("--amp needs --device cuda")
    unknown = sorted(set(args.only or []) - set(SUMMARY_PATTERNS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(SUMMARY_PATTERNS)}")

    machine = machine_line()
    load_before = os.getloadavg()
    print(f"GALW-PS benchmarks, scale {args.scale}, device {args.device}{' + AMP' if args.amp else ''}; {machine}; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data_root or tmp
        todo = benchmarks(args, data_root)
        for name, argv in todo.items():
            if args.only and name not in args.only:
                continue
            if name in ("overhead_roi_alignps", "cpu_step"):
                make_synthetic_data(data_root)
            results[name] = run(name, argv, data_root)

    load_after = os.getloadavg()
    print("\n================ summary ================")
    print(f"scale {args.scale}, device {args.device}{' + AMP' if args.amp else ''}; {machine}")
    print(f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} (1 min), "
          f"{load_after[1]:.2f} (5 min)")
    failed = []
    for name, (rc, seconds, lines) in results.items():
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"-- {name}: {status}, {seconds:.0f} s")
        for line in lines:
            if re.search(SUMMARY_PATTERNS[name], line):
                print(f"   {line.strip()}")
        if name == "overhead_roi_alignps":
            print(f"   {projected_overhead(lines)}")
        if rc != 0:
            failed.append(name)
            print("   " + "\n   ".join(lines[-5:]))
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
