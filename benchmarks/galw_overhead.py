#!/usr/bin/env python
"""Training step-time ratio of GALW (probing phase, default PROBE_PERIOD) over equal weighting,
both measured in this one run, interleaved in blocks so load changes hit both arms alike.

    PYTHONPATH=projects/GALW:. python benchmarks/galw_overhead.py                 # toy model
    PYTHONPATH=projects/GALW:. python benchmarks/galw_overhead.py --config-file CFG [KEY VALUE ...]

With a config file the model is built by galw.engine.Trainer (its MODEL.GALW.* keys must name
the tasks); the equal-weighting arm is the same config with MODEL.GALW.ENABLED False, or under CPU
AMP (which needs the GALW step) the GALW step with manual weights all 1 and a group per task: the
plain sum, with the step's bookkeeping (its metrics and finiteness check) in its time.
Also prints the probe options: every iteration, batched per-task gradients, and gradients
with respect to all trainable parameters instead of the shared ones only.
"""
import argparse
import os
import tempfile
import time

import galw  # noqa: F401  (before detectron2)
import torch
from detectron2.utils.events import EventStorage, get_event_storage

from galw.config_file import merge_config_file
from galw_core.solver import build_optimizer
from galw_core.train_step import GALWSimpleTrainer, attach_weighting
from galw_core.hook import GALWHook
from galw_core.probe import GradientProbe, select_shared_parameters
from galw_core.toy import ToyMultiTask, toy_batches
from result_file import save


def toy_cfg(period, batched=False):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.GALW.ENABLED", True,
            "MODEL.GALW.TASKS", [f"loss_t{i}" for i in range(6)],
            "MODEL.GALW.TASK_KINDS", ["classification"] * 6,
            "MODEL.GALW.MODE", "single_run",
            "MODEL.GALW.PROBE_EPOCHS", 1000,
            "MODEL.GALW.EPOCH_ITERS", max(period, 20) * 100,
            "MODEL.GALW.PROBE_BATCHED", batched,
            "SOLVER.BASE_LR", 1e-4,
            # the arms time probing steps only: a schedule whose grouped phase starts after the run
            # (check_galw_config wants the probing epochs to end before MAX_ITER)
            "SOLVER.MAX_ITER", 1000 * max(period, 20) * 100 + 1,
        ]
    )
    if period:
        cfg.MODEL.GALW.PROBE_PERIOD = period
    return cfg


class ToyArm:
    """One arm on the toy: a GALW train step (probe every ``period``) or plain equal weighting."""

    def __init__(self, period=None, batched=False, all_params=False, size=64, batch=8):
        cfg = toy_cfg(period or 20, batched)
        torch.manual_seed(0)
        model = ToyMultiTask(epoch_iters=10**6, channels=32)
        data = toy_batches(batch_size=batch, size=size)
        if period is None:  # equal weighting, detectron2's own SimpleTrainer
            from detectron2.engine import SimpleTrainer

            self.step = SimpleTrainer(model, data, build_optimizer(cfg, model))
            self.step.storage = get_event_storage()
            return
        attach_weighting(model, cfg)
        shared = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad and "galw" not in n]
            if all_params
            else select_shared_parameters(model, cfg.MODEL.GALW.SHARED_PARAM_PREFIXES)
        )
        self.step = GALWSimpleTrainer(model, data, build_optimizer(cfg, model), probe=GradientProbe(shared, batched))
        self.step.register_hooks([GALWHook(cfg, self.step, cfg.MODEL.GALW.EPOCH_ITERS)])
        self.step.storage = get_event_storage()
        self.step.before_train()

    def run(self, start, n):
        t0 = time.perf_counter()
        for it in range(start, start + n):
            self.step.iter = self.step.storage.iter = it
            self.step.before_step()
            self.step.run_step()
            self.step.after_step()
        return time.perf_counter() - t0


class ConfigArm:
    """One arm built by galw.engine.Trainer from a config file."""

    def __init__(self, args, enabled):
        from detectron2.config import get_cfg

        from galw.engine import Trainer

        cfg = get_cfg()
        galw.add_galw_config(cfg)
        merge_config_file(cfg, args.config_file)
        cfg.merge_from_list(args.opts + ["MODEL.GALW.ENABLED", enabled, "OUTPUT_DIR", tempfile.mkdtemp()])
        if not enabled and cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
            # AMP on a CPU runs in the GALW step (galw.engine.trainer.check_amp): the plain sum there
            cfg.MODEL.GALW.ENABLED = True
            cfg.MODEL.GALW.GROUPING = "per_task"
            cfg.MODEL.GALW.WEIGHTING = "manual"
            cfg.MODEL.GALW.MANUAL_WEIGHTS = [1.0] * len(cfg.MODEL.GALW.TASKS)
        if enabled:
            cfg.MODEL.GALW.MODE = "single_run"
            cfg.MODEL.GALW.PROBE_EPOCHS = 10**6
            # the arm times probing steps only: the grouped phase starts after the run
            # (check_galw_config wants the probing epochs to end before MAX_ITER)
            cfg.SOLVER.MAX_ITER = 10**6 * max(1, cfg.MODEL.GALW.EPOCH_ITERS) + 1
        cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
        self.trainer = Trainer(cfg)
        self.trainer.storage = self.trainer._trainer.storage = get_event_storage()
        self.trainer.before_train()
        self.step = self.trainer._trainer

    def run(self, start, n):
        t0 = time.perf_counter()
        for it in range(start, start + n):
            self.trainer.iter = self.step.iter = self.trainer.storage.iter = it
            self.trainer.before_step()
            self.step.run_step()
            self.trainer.after_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def interleaved(arms, rounds, blocks, warmup):
    """Seconds per step of each arm; in each round every arm runs its block of steps in turn
    (a GALW arm's block is a multiple of its probe period, so each block holds its probes)."""
    for a in arms.values():
        a.run(0, warmup)
    totals = {k: 0.0 for k in arms}
    starts = {k: warmup for k in arms}
    for _ in range(rounds):
        for k, a in arms.items():
            totals[k] += a.run(starts[k], blocks[k])
            starts[k] += blocks[k]
    return {k: v / (rounds * blocks[k]) for k, v in totals.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.config_file:
        with EventStorage(0):
            arms = {"equal": ConfigArm(args, False), "galw": ConfigArm(args, True)}
            period = arms["galw"].trainer.cfg.MODEL.GALW.PROBE_PERIOD
            block = max(args.block, period)
            t = interleaved(arms, args.rounds, {"equal": block, "galw": block}, args.warmup)
        print(f"config {args.config_file}: {t['equal'] * 1e3:.1f} ms/step equal, {t['galw'] * 1e3:.1f} ms/step GALW")
        print(f"step-time ratio GALW (PROBE_PERIOD={period}) / equal: {t['galw'] / t['equal']:.3f}")
        save("galw_overhead_" + os.path.splitext(os.path.basename(args.config_file))[0], {
            "settings": {"config": args.config_file, "rounds": args.rounds, "block": block, "probe period": period,
                         "threads": torch.get_num_threads()},
            "rows": [{"arm": k, "ms/step": round(v * 1e3, 1)} for k, v in t.items()],
            "step-time ratio GALW / equal": round(t["galw"] / t["equal"], 3),
        })
        return
    default_period = toy_cfg(0).MODEL.GALW.PROBE_PERIOD
    block = max(args.block, default_period)
    default = f"galw default (period {default_period})"
    with EventStorage(0):
        arms = {
            "equal": ToyArm(None),
            default: ToyArm(default_period),
            f"period {default_period}, batched": ToyArm(default_period, batched=True),
            "galw, never probing": ToyArm(10**6),
            "probe every iteration": ToyArm(1),
            "probe every iteration, batched": ToyArm(1, batched=True),
            "probe every iteration, all params": ToyArm(1, all_params=True),
        }
        short = max(1, args.block // 10)
        blocks = {k: (short if "every iteration" in k else block) for k in arms}
        t = interleaved(arms, args.rounds, blocks, args.warmup)
    base = t["equal"]
    print(f"toy model (6 tasks, 3-stage conv trunk, 8x3x64x64 batches), threads={torch.get_num_threads()}, "
          f"{args.rounds} rounds, equal = {base * 1e3:.2f} ms/step")
    for k, v in t.items():
        print(f"  {k:40s} {v * 1e3:8.2f} ms/step   ratio {v / base:.3f}")
    print(f"step-time ratio GALW default / equal: {t[default] / base:.3f}")
    save("galw_overhead_toy", {
        "settings": {"model": "toy: 6 tasks, 3-stage conv trunk, 8x3x64x64 batches", "rounds": args.rounds,
                     "block": block, "threads": torch.get_num_threads()},
        "rows": [{"arm": k, "ms/step": round(v * 1e3, 2), "ratio to equal": round(v / base, 3)} for k, v in t.items()],
        "step-time ratio GALW default / equal": round(t[default] / base, 3),
    })


if __name__ == "__main__":
    main()
