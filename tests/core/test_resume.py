"""Resume reproduces the run: an interrupted GALW two-phase training resumed with ``--resume`` ends
bit-identical (CPU) to the same training uninterrupted, groups included (every model family:
tests/core/test_resume_<family>.py).

Cases:
- test_kill_in_phase_one_then_resume_matches_uninterrupted: killed in phase one after a mid-epoch
  checkpoint; data order, augmentation, Gamma history, groups and both trainings' weights match.
- test_kill_in_phase_two_then_resume_matches_uninterrupted: killed in phase two; weights, sigmas,
  optimizer state and GALW state match.
- test_sampler_started_at_k_continues_the_uninterrupted_stream: the loader's batch k (indices,
  aspect groups, per-sample augmentation seeds) is the same whether started at 0 or at k.
- test_loader_start_draws_nothing_from_the_global_torch_stream: starting the loader (in a resumed
  run's first step) leaves the stream the model samples proposals from as it was.
- test_stale_temp_files_removed_on_start: ``*.tmp.<pid>`` files of a killed writer (or of a pid now
  reused by a process that does not hold them) are removed when a checkpointer starts, logged;
  a live writer's file and other programs' files are kept.
"""
import itertools
import json
import logging
import os
import random
import subprocess

import numpy as np

import pytest
import torch
from detectron2.engine.train_loop import HookBase

import train_net
from conftest import CONFIG_DIR
from galw.checkpoint import AtomicCheckpointer
from galw_core.two_phase import PHASE_ONE_DIR
from galw.data.resumable_loader import PositionedBatchSampler, ResumableTrainLoader, _SeededMapping

#: 4 iterations per training, 2 per Gamma epoch, a checkpoint after iteration 2 (mid-epoch), killed
#: before iteration 3. Multi-scale and flip stay random so that the augmentation state matters.
OPTS = [
    "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 3, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 1,
    "SOLVER.STEPS", "()", "INPUT.PS.TRAIN_LONG_SIDE_RANGE", "(80, 112)",
    "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", "(60, 84)", "INPUT.PS.HFLIP_PROB", 0.5,
    "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16, "MODEL.GALW.EPOCH_ITERS", 2, "MODEL.GALW.PROBE_PERIOD", 1,
    "DATASETS.TEST", "()", "SEED", 7,
]
KILL_AT = 3


class Killed(Exception):
    """Stands for a kill -9: raised before an iteration, after the last checkpoint."""


class _Kill(HookBase):
    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            raise Killed(self.at)


def _killing_trainer(output_dir):
    class KillingTrainer(train_net.Trainer):
        def build_hooks(self):
            hooks = super().build_hooks()
            if os.path.abspath(self.cfg.OUTPUT_DIR) == os.path.abspath(output_dir):
                hooks.insert(0, _Kill(KILL_AT))
            return hooks

    return KillingTrainer


def _main(out, resume=False):
    argv = ["--config-file", os.path.join(CONFIG_DIR, "alignps", "alignps_R18_synth_galw.yaml")]
    argv += ["--resume"] if resume else []
    argv += [str(o) for o in ["OUTPUT_DIR", out, *OPTS]]
    return train_net.main(train_net.default_argument_parser().parse_args(argv))


@pytest.fixture(scope="module")
def uninterrupted(tiny_synth_prw, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _main(str(out))
    return out


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _assert_same_run(expected_dir, got_dir):
    for sub in (PHASE_ONE_DIR, ""):
        exp = _load(os.path.join(expected_dir, sub, "model_final.pth"))
        got = _load(os.path.join(got_dir, sub, "model_final.pth"))
        differ = [k for k in exp["model"] if not torch.equal(exp["model"][k], got["model"][k])]
        assert not differ, f"{sub or 'phase two'}: {len(differ)} of {len(exp['model'])} tensors differ: {differ[:5]}"
        # Optimizer momentum, LR scheduler and the GALW hook (phase, Gamma history, groups) too.
        _assert_same_tensors(exp["trainer"], got["trainer"], f"{sub or 'phase two'}.trainer")
        with open(os.path.join(expected_dir, sub, "galw_groups.json")) as f:
            groups_exp = json.load(f)
        with open(os.path.join(got_dir, sub, "galw_groups.json")) as f:
            assert json.load(f) == groups_exp


def test_sampler_started_at_k_continues_the_uninterrupted_stream():
    groups = [0, 1, 0, 0, 1, 1, 0]
    for rank in (0, 1):
        full = PositionedBatchSampler(7, 2, seed=5, aspect_groups=groups, rank=rank, world_size=2)
        from_k = PositionedBatchSampler(7, 2, seed=5, start_iter=6, aspect_groups=groups, rank=rank, world_size=2)
        expected = list(itertools.islice(iter(full), 10))
        assert list(itertools.islice(iter(from_k), 4)) == expected[6:]
        assert all(len({groups[i] for i, _ in b}) == 1 for b in expected)  # one aspect group per batch
        assert all(p % 2 == rank for b in expected for _, p in b)  # rank r takes positions r, r + 2, ...
    # A sample's augmentation depends on its stream position only, not on what ran before.
    mapping = _SeededMapping([{"i": 0}], lambda d: (np.random.uniform(), random.random()), seed=5)
    first = mapping[(0, 3)]
    np.random.uniform(size=5)
    assert mapping[(0, 3)] == first and mapping[(0, 4)] != first


def test_loader_start_draws_nothing_from_the_global_torch_stream():
    """The model's random draws of a step (proposal sampling) follow ReproducibleRun's seed whether
    the loader started in this step (a resumed run) or earlier."""
    loader = ResumableTrainLoader([{"width": 4, "height": 3, "i": i} for i in range(3)], lambda d: d, 1, seed=5)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert next(iter(loader))[0]["width"] == 4
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_kill_in_phase_one_then_resume_matches_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    out = str(tmp_path)
    monkeypatch.setattr(train_net, "Trainer", _killing_trainer(os.path.join(out, PHASE_ONE_DIR)))
    with pytest.raises(Killed):
        _main(out)
    assert (tmp_path / PHASE_ONE_DIR / "last_checkpoint").read_text() == "model_0000002.pth"
    assert not (tmp_path / PHASE_ONE_DIR / "galw_groups.json").exists()
    monkeypatch.undo()
    _main(out, resume=True)
    _assert_same_run(str(uninterrupted), out)


@pytest.mark.slow
def test_kill_in_phase_two_then_resume_matches_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    out = str(tmp_path)
    monkeypatch.setattr(train_net, "Trainer", _killing_trainer(out))
    with pytest.raises(Killed):
        _main(out)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    monkeypatch.undo()
    _main(out, resume=True)
    _assert_same_run(str(uninterrupted), out)


def test_stale_temp_files_removed_on_start(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    own = os.getpid()  # alive, but holds none of these files open: a reused pid
    stale = [f"model_0000099.pth.tmp.{dead.pid}", f"last_checkpoint.tmp.{dead.pid}",
             f"galw_groups.json.tmp.{own}"]
    foreign = [f"notes.txt.tmp.{dead.pid}", "model_final.pth.tmp.abc"]
    for name in stale + foreign:
        (tmp_path / name).write_bytes(b"partial")
    in_flight = tmp_path / "model_0000100.pth.tmp.0"
    in_flight.write_bytes(b"")
    with open(in_flight, "rb") as held:
        writer = subprocess.Popen(["sleep", "60"], stdin=held)
    live = tmp_path / f"model_0000100.pth.tmp.{writer.pid}"
    in_flight.rename(live)  # the writer holds it open under its own pid's name
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("galw.checkpoint").addHandler(handler)
    try:
        AtomicCheckpointer(torch.nn.Linear(1, 1), str(tmp_path))
    finally:
        logging.getLogger("galw.checkpoint").removeHandler(handler)
        writer.kill()
        writer.wait()
    left = set(os.listdir(tmp_path))
    assert left == set(foreign) | {live.name}
    message = " ".join(r.getMessage() for r in records)
    assert all(name in message for name in stale) and live.name not in message
