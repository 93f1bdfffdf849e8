"""What makes resume exact, part by part (the whole trainings interrupted in each phase and resumed, per
model family: tests/core/test_resume_<family>.py).

Cases:
- test_sampler_started_at_k_continues_the_uninterrupted_stream: the loader's batch k (indices,
  aspect groups, per-sample augmentation seeds) is the same whether started at 0 or at k.
- test_loader_start_draws_nothing_from_the_global_torch_stream: starting the loader (in a resumed
  run's first step) leaves the stream the model samples proposals from as it was.
- test_stale_temp_files_removed_on_start: ``*.tmp.<pid>`` files of a killed writer (or of a pid now
  reused by a process that does not hold them) are removed when a checkpointer starts, logged;
  a live writer's file and other programs' files are kept.
"""
import itertools
import logging
import os
import random
import subprocess

import numpy as np
import torch

from galw.checkpoint import AtomicCheckpointer
from galw.data.resumable_loader import PositionedBatchSampler, ResumableTrainLoader, _SeededMapping


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
