#!/usr/bin/env python
"""Train and evaluate GALW-PS models with detectron2's DefaultTrainer.

    python train_net.py --config-file projects/GALW/configs/<config>.yaml [--num-gpus N]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file ... --resume          # continue from OUTPUT_DIR
"""
import logging
import weakref
from collections import OrderedDict

import galw  # noqa: F401  (closes detectron2 gaps and registers the project's parts)
import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from galw import add_galw_config
from galw.checkpoint import AtomicCheckpointer
from galw.data import build_person_search_train_loader
from galw.engine import attach_weighting, build_optimizer, install_galw
from galw.evaluation import evaluate_person_search, is_person_search_dataset
from galw.two_phase import needs_two_phases, train_two_phase


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


def setup(args):
    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    if needs_two_phases(cfg):  # GALW Algorithm 1: a probing training, then the grouped one
        return train_two_phase(cfg, Trainer, resume=args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    logging.getLogger(__name__).info("Command Line Args: %s", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
