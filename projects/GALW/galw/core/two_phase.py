"""Algorithm 1's two trainings: a first one records Gamma and writes the groups, a second one
trains from the same initial weights with those groups (paper Sec. 3.2.2)."""
import logging
import os

import torch

import detectron2.utils.comm as comm

from ..checkpoint import atomic_write
from .hook import GROUPS_FILENAME
from .train_step import epoch_iters

__all__ = ["needs_two_phases", "phase_configs", "train_two_phase", "PHASE_ONE_DIR", "INIT_WEIGHTS"]

logger = logging.getLogger(__name__)

#: Phase one's OUTPUT_DIR, inside the run's OUTPUT_DIR.
PHASE_ONE_DIR = "galw_phase1"
#: Phase one's initial weights (after MODEL.WEIGHTS was loaded), phase two's MODEL.WEIGHTS.
INIT_WEIGHTS = "galw_init.pth"


def needs_two_phases(cfg) -> bool:
    g = cfg.MODEL.GALW
    return bool(g.ENABLED and g.MODE == "two_phase" and g.GROUPING == "galw" and not g.GROUPS_FILE)


def phase_configs(cfg):
    """(phase-one cfg, phase-two cfg). Phase one writes into OUTPUT_DIR/galw_phase1 and, with
    PROBE_EPOCHS > 0, lasts PROBE_EPOCHS epochs; phase two reads its groups file and weights."""

    one = cfg.clone()
    one.defrost()
    one.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, PHASE_ONE_DIR)
    if cfg.MODEL.GALW.PROBE_EPOCHS > 0:
        one.SOLVER.MAX_ITER = cfg.MODEL.GALW.PROBE_EPOCHS * epoch_iters(cfg)
    # Phase one only measures Gamma: no evaluation (detectron2's EvalHook also evaluates after the
    # last iteration whatever EVAL_PERIOD is, so the test sets are removed).
    one.TEST.EVAL_PERIOD = 0
    one.DATASETS.TEST = ()
    one.freeze()
    two = cfg.clone()
    two.defrost()
    two.MODEL.GALW.GROUPS_FILE = os.path.join(one.OUTPUT_DIR, GROUPS_FILENAME)
    two.MODEL.WEIGHTS = os.path.join(one.OUTPUT_DIR, INIT_WEIGHTS)
    two.freeze()
    return one, two


def train_two_phase(cfg, trainer_cls, resume: bool = False):
    """Run (or resume) phase one unless its groups exist, then phase two; returns phase two's
    ``train()`` result. ``trainer_cls(cfg)`` must build a GALW-enabled DefaultTrainer."""
    one, two = phase_configs(cfg)
    groups_file = two.MODEL.GALW.GROUPS_FILE
    phase_two_started = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not phase_two_started and not os.path.isfile(groups_file):
        logger.info("GALW phase one: recording Gamma in %s", one.OUTPUT_DIR)
        first = trainer_cls(one)
        first.resume_or_load(resume=resume)
        if first.start_iter == 0 and comm.is_main_process():
            _save_init_weights(first.model, two.MODEL.WEIGHTS)
        comm.synchronize()
        first.train()
        del first
    comm.synchronize()
    if not os.path.isfile(groups_file):
        raise FileNotFoundError(f"GALW phase one ended without writing {groups_file}")
    logger.info("GALW phase two: training with the groups of %s", groups_file)
    second = trainer_cls(two)
    second.resume_or_load(resume=resume)
    return second.train()


def _save_init_weights(model, path):
    model = getattr(model, "module", model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: torch.save({"model": model.state_dict()}, f))
    logger.info("GALW: initial weights saved to %s", path)
