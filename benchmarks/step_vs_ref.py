#!/usr/bin/env python
"""CPU training-step time of this checkout against another git revision, both in one run.

Each arm is a worker process that imports its own checkout (the other revision through a
temporary ``git worktree``), builds the demo's config with the same seed and data, and times
blocks of training steps on command; the blocks alternate between the arms, so load changes hit
both alike. Prints seconds per step and the ratio, and writes results/benchmarks/NAME.json
(``--name``, default step_vs_ref).

    python benchmarks/step_vs_ref.py --ref 85b60af [--rounds 4] [--block 3] [--this-opts "KEY VALUE ..."]
        [KEY VALUE ...]

KEY VALUE pairs apply to both arms; ``--this-opts`` to this checkout's arm only (keys the other
revision may not have, e.g. ``--this-opts "SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION bfloat16"``).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIG = os.path.join("projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_galw.yaml")


def worker(repo, opts):
    """Build the demo's trainer from ``repo``'s code; answer "N" on stdin with N steps' seconds."""
    sys.path[:0] = [os.path.join(repo, "projects", "GALW"), os.path.join(repo, "benchmarks")]
    import galw  # noqa: F401  (compat before detectron2)
    import torch
    from detectron2.utils.events import EventStorage
    from galw_overhead import ConfigArm

    torch.set_num_threads(int(os.environ.get("STEP_THREADS", "2")))
    with EventStorage(0):
        torch.manual_seed(0)
        arm = ConfigArm(argparse.Namespace(config_file=os.path.join(repo, CONFIG), opts=opts), False)
        start = 0
        print("@@ready", flush=True)
        for line in sys.stdin:
            n = int(line)
            print("@@" + json.dumps(arm.run(start, n)), flush=True)
            start += n


def reply(proc, name):
    """The worker's next protocol line (``@@...``); its log lines on stdout are skipped."""
    for line in proc.stdout:
        if line.startswith("@@"):
            return line[2:].strip()
    raise RuntimeError(f"the {name} worker exited with {proc.wait()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="git revision to compare this checkout with (required)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=3, help="steps per arm per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--this-opts", default="", help="KEY VALUE pairs for this checkout's arm only, one string")
    parser.add_argument("--name", default="step_vs_ref", help="result file name (results/benchmarks/NAME.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.opts)
    if not args.ref:
        parser.error("--ref is required")

    data = tempfile.mkdtemp(prefix="galw_step_data_")
    sys.path.insert(0, os.path.join(REPO, "projects", "GALW"))
    from galw.data.synthetic import generate
    from result_file import save

    generate("prw", os.path.join(data, "SynthPS-PRW"), seed=0, size="tiny")
    ref_dir = tempfile.mkdtemp(prefix="galw_ref_")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", ref_dir, args.ref], check=True,
                   capture_output=True)
    env = dict(os.environ, DETECTRON2_DATASETS=data)
    arms = {}
    try:
        this_opts = args.opts + shlex.split(args.this_opts)
        for name, repo, opts in (("this checkout", REPO, this_opts), (f"ref {args.ref}", ref_dir, args.opts)):
            arms[name] = subprocess.Popen([sys.executable, __file__, "--worker", repo] + opts, env=env, text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            reply(arms[name], name)

        def steps(name, n):
            arms[name].stdin.write(f"{n}\n")
            arms[name].stdin.flush()
            return json.loads(reply(arms[name], name))

        for name in arms:
            steps(name, args.warmup)
        total = {name: 0.0 for name in arms}
        for r in range(args.rounds):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                total[name] += steps(name, args.block)
    finally:
        for p in arms.values():
            p.kill()
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", ref_dir], capture_output=True)
    per_step = {name: t / (args.rounds * args.block) for name, t in total.items()}
    this, ref = per_step["this checkout"], per_step[f"ref {args.ref}"]
    load = os.getloadavg()
    print(f"{CONFIG}, {args.rounds} rounds x {args.block} steps per arm, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name, t in per_step.items():
        print(f"  {name:24s} {t:.3f} s/step")
    print(f"speed-up of this checkout over {args.ref}: {ref / this:.2f}x")
    save(args.name, {
        "config": CONFIG, "ref": args.ref, "rounds": args.rounds, "block": args.block, "opts": args.opts,
        "this_opts": shlex.split(args.this_opts),
        "seconds_per_step": {"this": this, "ref": ref}, "speedup": ref / this,
    })


if __name__ == "__main__":
    main()
