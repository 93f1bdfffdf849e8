#!/usr/bin/env python
"""Train and evaluate GALW-PS models with detectron2's DefaultTrainer.

    python train_net.py --config-file projects/GALW/configs/<config>.yaml [--num-gpus N]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file ... --resume          # continue from OUTPUT_DIR

A GALW phase one interrupted and resumed must keep the settings it started with (recorded in
OUTPUT_DIR/galw_phase1/galw_phase1_config.json); ``--resume --mixed-phase-one`` continues it under
changed ones, logged and recorded as mixed. ``--galw-phase-one-only`` runs GALW's first training
alone (its groups and initial weights), and a later run without it trains phase two from them.
"""
import logging

import galw  # noqa: F401  (closes detectron2 gaps and registers the project's parts)
import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from galw.checkpoint import AtomicCheckpointer
from galw.config_file import load_config
from galw_core import needs_two_phases, train_two_phase
from galw.engine import Trainer, setup_galw_logger


def setup(args):
    cfg = load_config(args.config_file, args.opts)  # safe YAML: a config runs no code
    cfg.freeze()
    default_setup(cfg, args)
    setup_galw_logger(cfg.OUTPUT_DIR)  # galw.* lines (groups, s*, phases) beside detectron2's
    return cfg


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--mixed-phase-one", action="store_true",
        help="with --resume: continue an interrupted GALW phase one under settings other than those it was "
             "trained with so far (logged; galw_phase1_config.json records it as mixed, and its groups are "
             "never taken as matching a later run's settings)",
    )
    parser.add_argument(
        "--galw-phase-one-only", action="store_true",
        help="GALW Algorithm 1: run its first training only (the Gamma probe, written to OUTPUT_DIR/galw_phase1: "
             "galw_groups.json and the initial weights galw_init.pth), then stop; a later run without it trains "
             "phase two from those files",
    )
    return parser


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    if needs_two_phases(cfg):  # GALW Algorithm 1: a probing training, then the grouped one
        return train_two_phase(cfg, Trainer, resume=args.resume,
                               mixed_phase_one=getattr(args, "mixed_phase_one", False),
                               phase_one_only=getattr(args, "galw_phase_one_only", False))
    if getattr(args, "galw_phase_one_only", False):
        raise ValueError("--galw-phase-one-only needs a GALW two-phase config: MODEL.GALW.ENABLED True, MODE "
                         "'two_phase', GROUPING 'galw' and no MODEL.GALW.GROUPS_FILE")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    logging.getLogger(__name__).info("Command Line Args: %s", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
