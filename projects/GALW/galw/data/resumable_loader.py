"""A training loader whose batches depend only on (seed, iteration), so that ``--resume`` continues
the data order and the augmentation random state exactly where the interrupted run stood.

detectron2's loader draws its order from a sampler that always starts at the first index, groups
images by aspect ratio in buffers that live in the iterator, and augments with the global numpy
stream (a worker's stream is seeded when the worker starts). A resumed run therefore sees other
batches with other augmentations than the uninterrupted run. Here:

* the order is detectron2's TrainingSampler stream (a seeded ``randperm`` per pass, rank r takes
  positions r, r + world, ...), grouped by aspect ratio from the records' width/height (the key
  detectron2's AspectRatioGroupedDataset uses) in the sampler, so batch i is known without loading
  an image and resuming at iteration k skips k batches of indices;
* each sample's augmentation draws from numpy and ``random`` seeded by (seed, its position in the
  stream), the same in the main process and in any worker.
"""
import logging
import random
from contextlib import contextmanager
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import detectron2.utils.comm as comm
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList

__all__ = ["ResumableTrainLoader", "PositionedBatchSampler", "derived_seed"]

logger = logging.getLogger(__name__)


def derived_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys (numpy's SeedSequence: independent streams per key tuple)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


@contextmanager
def seeded_global_rngs(seed: int):
    """numpy's and ``random``'s global streams seeded for the block, restored after it."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


class PositionedBatchSampler:
    """This rank's batches of ``(dataset index, stream position)``, from batch ``start_iter`` on."""

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0,
                 aspect_groups: Optional[Sequence[int]] = None, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = int(size), int(batch_size), int(seed)
        self.start_iter = int(start_iter)
        self.aspect_groups = aspect_groups
        self.rank, self.world_size = int(rank), int(world_size)

    def _stream(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        position = 0
        while True:
            for index in torch.randperm(self.size, generator=g).tolist():
                if position % self.world_size == self.rank:
                    yield index, position
                position += 1

    def __iter__(self):
        buckets = {}
        batch = 0
        for index, position in self._stream():
            key = self.aspect_groups[index] if self.aspect_groups is not None else 0
            bucket = buckets.setdefault(key, [])
            bucket.append((index, position))
            if len(bucket) == self.batch_size:
                if batch >= self.start_iter:
                    yield list(bucket)
                bucket.clear()
                batch += 1


class _SeededMapping(Dataset):
    """``mapper(record)`` with the augmentation RNGs seeded by (seed, stream position)."""

    def __init__(self, records, mapper, seed: int):
        self.records = DatasetFromList(records, copy=False)
        self.mapper = mapper
        self.seed = int(seed)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        index, position = key
        with seeded_global_rngs(derived_seed(self.seed, position)):
            return self.mapper(self.records[index])


class ResumableTrainLoader:
    """Infinite iterable of per-rank batches (lists of mapped dicts), positioned by :meth:`position`.

    ``iter()`` starts nothing: the sampler and the workers start at the first ``next()``, so a
    trainer can build the loader, load a checkpoint, then position it at the start iteration.
    """

    def __init__(self, records: List[dict], mapper, total_batch_size: int, seed: int,
                 aspect_ratio_grouping: bool = True, num_workers: int = 0):
        world = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH is {total_batch_size}: it must be a positive multiple of the "
                f"number of processes ({world})"
            )
        if not records:
            raise ValueError("DATASETS.TRAIN holds no image to train on")
        self.batch_size = total_batch_size // world
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.start_iter = 0
        self.aspect_groups = [0 if r["width"] > r["height"] else 1 for r in records] if aspect_ratio_grouping else None
        self._records = records
        self._mapper = mapper

    def position(self, seed: int, start_iter: int):
        """Make the next ``iter()`` of this loader yield batch ``start_iter`` of the ``seed`` stream."""
        self.seed, self.start_iter = int(seed), int(start_iter)

    def __iter__(self):
        sampler = PositionedBatchSampler(
            len(self._records), self.batch_size, self.seed, self.start_iter, self.aspect_groups,
            comm.get_rank(), comm.get_world_size(),
        )
        logger.info("Training data: seed %d, from batch %d (%d per process)", self.seed, self.start_iter, self.batch_size)
        # A DataLoader iterator draws its workers' base seed when it starts (torch's dataloader.py,
        # _BaseDataLoaderIter.__init__), from the global torch stream unless given a generator. That
        # draw happens in the first step of a process: at iteration 0 uninterrupted, at the start
        # iteration when resumed, where it shifted the stream ReproducibleRun had just seeded and so
        # the model's draws in that step (the RPN's and ROI heads' proposal sampling).
        generator = torch.Generator()
        generator.manual_seed(derived_seed(self.seed, comm.get_rank()))
        loader = DataLoader(
            _SeededMapping(self._records, self._mapper, self.seed),
            batch_sampler=sampler,
            collate_fn=trivial_batch_collator,
            num_workers=self.num_workers,
            worker_init_fn=worker_init_reset_seed,
            generator=generator,
        )
        yield from loader
