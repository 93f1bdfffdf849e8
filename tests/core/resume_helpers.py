"""Resume is exact for every model family: a two-phase GALW training (NAE, AlignPS, ROI-AlignPS*,
ROI-AlignPS*-Attr) interrupted in phase one or in phase two and resumed with ``--resume`` ends with
final checkpoints (weights, buffers such as the OIM queues and BN statistics, optimizer, scheduler,
GALW state) bit-identical on CPU to the uninterrupted training's, in both phases. One test file per
family (tests/core/test_resume_<family>.py, so that test files spread the trainings over the pytest-xdist
workers); each trains its family's uninterrupted reference once (``reference_fixture``).

Cases:
- ``interrupted_then_resumed``: interrupted (in process) before an iteration that follows a mid-epoch
  checkpoint, in one phase or in each phase in turn, resumed after each interruption. ROI-AlignPS*, the
  demo's model, is interrupted in each phase in its own run (a fresh run interrupted in phase two; a run
  resumed in phase one that finishes phase two); the other families in one run (interrupted in phase
  one, resumed, interrupted in phase two, resumed), which reaches both phases' resume paths with one
  training fewer.
- ``sigkill_then_resumed``: ``train_net.py`` in a subprocess is killed with SIGKILL at a random
  iteration of either phase, then resumed with ``train_net.py --resume``; the drawn iteration is named
  on failure.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.engine.train_loop import HookBase

import train_net
from conftest import CONFIG_DIR, ROOT
from galw_core.two_phase import INIT_WEIGHTS, PHASE_ONE_DIR

#: Config and extra settings per family (NAE has no synthetic GALW config: its CPU config with GALW on).
FAMILIES = {
    "nae": ("nae/nae_R18_synth_cpu.yaml", ["MODEL.GALW.ENABLED", True, "MODEL.GALW.NUM_GROUPS", 3]),
    "alignps": ("alignps/alignps_R18_synth_galw.yaml", []),
    "roi_alignps": ("alignps/roi_alignps_R18_synth_galw.yaml", []),
    "roi_alignps_attr": ("attr/roi_alignps_attr_R18_synth_galw.yaml", []),
}
#: 4 iterations per phase, 2 per Gamma epoch, a checkpoint after iteration 2 (mid-epoch), interrupted
#: before iteration 3. Small images, multi-scale and flip random (the augmentation state matters),
#: OIM queues shorter than a few batches' unlabeled boxes (their write position wraps).
MAX_ITER = 4
OPTS = [
    "SOLVER.MAX_ITER", MAX_ITER, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", "()",
    "INPUT.PS.TRAIN_LONG_SIDE_RANGE", "(80, 112)", "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", "(60, 84)",
    "INPUT.PS.HFLIP_PROB", 0.5, "MODEL.OIM.QUEUE_SIZE", 16, "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16,
    "MODEL.GALW.EPOCH_ITERS", 2, "MODEL.GALW.PROBE_PERIOD", 1, "MODEL.GALW.PROBE_EPOCHS", 0,
    "DATASETS.TEST", "()", "SEED", 7,
]
CHECKPOINT_PERIOD = 3
INTERRUPT_AT = 3


class Interrupted(Exception):
    """Raised before an iteration, after the last checkpoint."""


class _Interrupt(HookBase):
    def __init__(self, output_dir):
        self.output_dir = os.path.abspath(output_dir)

    def before_step(self):
        if self.trainer.iter == INTERRUPT_AT and os.path.abspath(self.trainer.cfg.OUTPUT_DIR) == self.output_dir:
            raise Interrupted(self.output_dir)


def _args(family, out, resume=False, checkpoint_period=CHECKPOINT_PERIOD):
    config, extra = FAMILIES[family]
    argv = ["--config-file", os.path.join(CONFIG_DIR, config)] + (["--resume"] if resume else [])
    return argv + [str(o) for o in ["OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", checkpoint_period, *OPTS, *extra]]


def _main(family, out, resume=False):
    return train_net.main(train_net.default_argument_parser().parse_args(_args(family, out, resume)))


def reference_fixture(family):
    """A module fixture: the output directory of ``family``'s uninterrupted training, run once."""

    @pytest.fixture(scope="module")
    def reference(tiny_synth_prw, tmp_path_factory):
        out = str(tmp_path_factory.mktemp(f"uninterrupted_{family}"))
        _main(family, out)
        return out

    return reference


def _differences(a, b, where):
    """Dotted names where two (nested) states differ: tensors bit for bit, other values by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}" for k in sorted(set(a) ^ set(b), key=str)]
        for k in a:
            if k in b:
                out += _differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def _listing(names, shown=40):
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _run_differences(expected_dir, got_dir):
    """Differences between two runs' outputs: both phases' final checkpoints (model and trainer
    state), phase one's initial weights and groups file."""
    differ = []
    for sub, name in ((PHASE_ONE_DIR, "phase one"), ("", "phase two")):
        exp, got = (torch.load(os.path.join(d, sub, "model_final.pth"), map_location="cpu", weights_only=True)
                    for d in (expected_dir, got_dir))
        model = _differences(exp["model"], got["model"], "model")
        if model:
            differ.append(f"{name}: {len(model)} of {len(exp['model'])} tensors differ: {_listing(model)}")
        rest = _differences({k: v for k, v in exp.items() if k != "model"},
                            {k: v for k, v in got.items() if k != "model"}, "checkpoint")
        if rest:
            differ.append(f"{name}: {_listing(rest)}")
    init = [os.path.join(d, PHASE_ONE_DIR, INIT_WEIGHTS) for d in (expected_dir, got_dir)]
    if _differences(*[torch.load(p, weights_only=True) for p in init], "init"):
        differ.append(f"{INIT_WEIGHTS} differs")
    for sub, name in ((PHASE_ONE_DIR, "phase one"), ("", "phase two")):
        groups = []
        for d in (expected_dir, got_dir):
            with open(os.path.join(d, sub, "galw_groups.json")) as f:
                groups.append(json.load(f))
        if groups[0] != groups[1]:
            differ.append(f"{name}'s galw_groups.json: {groups[0]} != {groups[1]}")
    return differ


def _interrupting_trainer(output_dir):
    """train_net's Trainer, interrupted before iteration INTERRUPT_AT of the training in ``output_dir``."""

    class InterruptedTrainer(train_net.Trainer):
        def build_hooks(self):
            return [_Interrupt(output_dir)] + super().build_hooks()

    return InterruptedTrainer


def interrupted_then_resumed(family, phases, reference, tmp_path, monkeypatch):
    """Run ``family``'s training interrupted in each of ``phases`` ("phase_one", "phase_two") in turn, before
    iteration INTERRUPT_AT (after a mid-epoch checkpoint), resuming with ``--resume`` after each; then both
    phases' outputs must equal the uninterrupted ``reference`` directory's."""
    out = str(tmp_path)
    phase_dirs = {"phase_one": os.path.join(out, PHASE_ONE_DIR), "phase_two": out}
    for i, phase in enumerate(phases):
        interrupted = phase_dirs[phase]
        monkeypatch.setattr(train_net, "Trainer", _interrupting_trainer(interrupted))
        with pytest.raises(Interrupted):
            _main(family, out, resume=i > 0)
        with open(os.path.join(interrupted, "last_checkpoint")) as f:
            assert f.read() == f"model_{CHECKPOINT_PERIOD - 1:07d}.pth", interrupted
        if phase == "phase_one":  # stopped before its end: no groups yet
            assert not os.path.exists(os.path.join(interrupted, "galw_groups.json"))
        monkeypatch.undo()
    _main(family, out, resume=True)
    differ = _run_differences(reference, out)
    assert not differ, f"{family} interrupted in {' then '.join(phases)}, resumed: " + "; ".join(differ)


def _train_net(family, out, resume, log):
    """``train_net.py`` in a fresh process (``--resume`` before the KEY VALUE overrides), one thread
    as the reference training."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "projects", "GALW"), ROOT]))
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_net.py"), *_args(family, out, resume, 1)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out)


def sigkill_then_resumed(family, reference, tmp_path):
    """A checkpoint every iteration; SIGKILL as soon as the drawn iteration's checkpoint exists,
    i.e. somewhere in the next iteration or in its checkpoint's writing; then ``--resume``."""
    phase_dir, iteration = random.Random().choice([(d, i) for d in (PHASE_ONE_DIR, "") for i in range(MAX_ITER - 1)])
    where = f"SIGKILL after {os.path.join(phase_dir, f'model_{iteration:07d}.pth')}"
    out = str(tmp_path)
    trigger = os.path.join(out, phase_dir, f"model_{iteration:07d}.pth")
    with open(os.path.join(out, "killed.log"), "w") as log:
        proc = _train_net(family, out, False, log)
        deadline = time.monotonic() + 600
        while not os.path.exists(trigger) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{where}: the training ended before it (see {log.name})"
    assert not os.path.exists(os.path.join(out, "model_final.pth")), where
    with open(os.path.join(out, "resumed.log"), "w") as log:
        resumed = _train_net(family, out, True, log)
        assert resumed.wait(timeout=600) == 0, f"{where}: the resumed training failed (see {log.name})"
    differ = _run_differences(reference, out)
    assert not differ, f"{family}, {where}, resumed: " + "; ".join(differ)
