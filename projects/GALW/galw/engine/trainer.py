"""``Trainer``: detectron2's DefaultTrainer with the project's data, evaluation and GALW."""
import weakref
from collections import OrderedDict

import detectron2.utils.comm as comm
from detectron2.data import DatasetMapper
from detectron2.engine import DefaultTrainer

from ..checkpoint import AtomicCheckpointer
from galw_core import attach_weighting, build_optimizer, install_galw
from galw_core.train_step import check_amp_precision
from ..data import build_person_search_train_loader
from ..data.build import build_resumable_train_loader
from ..data.resumable_loader import ResumableTrainLoader
from ..evaluation import evaluate_person_search, is_person_search_dataset
from ..modeling.tasks import BRANCH_TASKS, tasks_of
from .reproducible import ReproducibleRun

__all__ = ["Trainer", "check_amp", "check_tasks_are_losses"]


def check_tasks_are_losses(cfg):
    """Every MODEL.GALW.TASKS entry is a loss key of the person-search model MODEL.PERSON_SEARCH.BRANCHES
    builds (galw.modeling.tasks); otherwise ValueError naming them. Other meta-architectures, and
    branches without a task order, declare no loss keys: a missing one fails at the first step."""
    if not cfg.MODEL.GALW.ENABLED or cfg.MODEL.META_ARCHITECTURE != "PersonSearch":
        return
    branches = list(cfg.MODEL.PERSON_SEARCH.BRANCHES)
    if not all(b in BRANCH_TASKS for b in branches):
        return
    losses = tasks_of(branches)
    unknown = [t for t in cfg.MODEL.GALW.TASKS if t not in losses]
    if unknown:
        raise ValueError(
            f"MODEL.GALW.TASKS: {', '.join(repr(t) for t in unknown)} {'is' if len(unknown) == 1 else 'are'} not "
            f"a loss of the model (MODEL.PERSON_SEARCH.BRANCHES {branches} give {', '.join(losses)})"
        )


def check_amp(cfg):
    """SOLVER.AMP.PRECISION is a known dtype; AMP in another dtype than float16, or on a CPU model, runs
    in the GALW train step (it autocasts on the model's device in that dtype): detectron2's AMPTrainer,
    which trains without GALW, autocasts float16 on CUDA only (it asserts CUDA at its first step,
    train_loop.py's ``AMPTrainer.run_step``). Raises ValueError naming the keys."""
    precision = check_amp_precision(cfg)
    if not cfg.SOLVER.AMP.ENABLED or cfg.MODEL.GALW.ENABLED:
        return
    plain_sum = ("MODEL.GALW WEIGHTING 'manual', GROUPING 'per_task' and MANUAL_WEIGHTS all 1 train the plain sum "
                 "of the losses")
    if cfg.MODEL.DEVICE == "cpu":
        raise ValueError("SOLVER.AMP.ENABLED with MODEL.DEVICE 'cpu' needs MODEL.GALW.ENABLED: detectron2's "
                         f"AMPTrainer runs on CUDA only ({plain_sum})")
    if precision != "float16":
        raise ValueError(f"SOLVER.AMP.PRECISION {precision!r} needs MODEL.GALW.ENABLED: detectron2's AMPTrainer "
                         f"autocasts float16 only ({plain_sum})")


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's data, evaluation and loss weighting; ``--resume`` is exact
    (data order, augmentation and random state follow the iteration, see :class:`ReproducibleRun`)."""

    def __init__(self, cfg):
        check_amp(cfg)  # training only: an evaluation (build_model alone) runs no train step
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        if is_person_search_dataset(cfg.DATASETS.TRAIN[0]):
            return build_person_search_train_loader(cfg)  # gt_pids (+ attributes), multi-scale
        return build_resumable_train_loader(cfg, DatasetMapper(cfg, True))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Person-search galleries get the two-pass search protocol; other datasets detectron2's."""
        person_search = [d for d in cfg.DATASETS.TEST if is_person_search_dataset(d)]
        others = [d for d in cfg.DATASETS.TEST if d not in person_search]
        results = OrderedDict()
        for name in person_search:
            results[name] = evaluate_person_search(cfg, model, name)
        if others:
            cfg_others = cfg.clone()
            cfg_others.defrost()
            cfg_others.DATASETS.TEST = tuple(others)
            results.update(super().test(cfg_others, model, evaluators))
        if len(results) == 1:
            results = list(results.values())[0]
        return results

    @classmethod
    def build_model(cls, cfg):
        check_tasks_are_losses(cfg)  # before DefaultTrainer writes metrics or phase one its files
        return attach_weighting(super().build_model(cfg), cfg)  # MODEL.GALW.ENABLED

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)  # detectron2's SGD; GALW sigmas without weight decay

    def build_hooks(self):
        # Runs inside DefaultTrainer.__init__, before the checkpoint hook is built.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hooks = install_galw(self, super().build_hooks())  # GALW train step + hook when enabled
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            seed = loader.seed
        else:
            seed = self.cfg.SEED if self.cfg.SEED >= 0 else comm.shared_random_seed()
        return [ReproducibleRun(seed)] + hooks
