"""``ReproducibleRun``: the random state of iteration i is a function of (seed, rank, i), so a run
resumed with ``--resume`` continues bit-identically (on CPU) to the uninterrupted one."""
import random

import numpy as np
import torch

import detectron2.utils.comm as comm
from detectron2.engine.train_loop import HookBase

from ..data.resumable_loader import ResumableTrainLoader, derived_seed

__all__ = ["ReproducibleRun"]


class ReproducibleRun(HookBase):
    """Positions a :class:`ResumableTrainLoader` at the start iteration and seeds torch, numpy and
    ``random`` before every step from (seed, rank, iteration); the seed is checkpointed.

    Random draws of the model (e.g. detectron2's proposal sampling) thus depend on the iteration,
    not on how many iterations this process ran before.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_train(self):
        loader = getattr(getattr(self.trainer, "_trainer", self.trainer), "data_loader", None)
        while loader is not None and not isinstance(loader, ResumableTrainLoader):
            loader = getattr(loader, "data_loader", None)  # a wrapper (compat.SharedDataLoader)
        if isinstance(loader, ResumableTrainLoader):
            loader.position(self.seed, self.trainer.iter)

    def before_step(self):
        seed = derived_seed(self.seed, comm.get_rank(), self.trainer.iter)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])
