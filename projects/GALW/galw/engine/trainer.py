"""``Trainer``: detectron2's DefaultTrainer with the project's data, evaluation and GALW."""
import weakref
from collections import OrderedDict

from detectron2.engine import DefaultTrainer

from ..checkpoint import AtomicCheckpointer
from ..core import attach_weighting, build_optimizer, install_galw
from ..data import build_person_search_train_loader
from ..evaluation import evaluate_person_search, is_person_search_dataset

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's data, evaluation and loss weighting."""

    @classmethod
    def build_train_loader(cls, cfg):
        if is_person_search_dataset(cfg.DATASETS.TRAIN[0]):
            return build_person_search_train_loader(cfg)  # gt_pids (+ attributes), multi-scale
        return super().build_train_loader(cfg)

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
        return attach_weighting(super().build_model(cfg), cfg)  # MODEL.GALW.ENABLED

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)  # detectron2's SGD; GALW sigmas without weight decay

    def build_hooks(self):
        # Runs inside DefaultTrainer.__init__, before the checkpoint hook is built.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return install_galw(self, super().build_hooks())  # GALW train step + hook when enabled
