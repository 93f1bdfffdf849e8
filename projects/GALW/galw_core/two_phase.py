"""Algorithm 1's two trainings: a first one records Gamma and writes the groups, a second one
trains from the same initial weights with those groups (paper Sec. 3.2.2)."""
import json
import logging
import os

import torch

import detectron2.utils.comm as comm

from .files import atomic_write
from .hook import GROUPS_FILENAME
from .train_step import epoch_iters

__all__ = [
    "needs_two_phases", "phase_configs", "train_two_phase", "PHASE_ONE_DIR", "INIT_WEIGHTS", "PHASE_ONE_RECORD",
    "phase_one_settings",
]

logger = logging.getLogger(__name__)

#: Phase one's OUTPUT_DIR, inside the run's OUTPUT_DIR.
PHASE_ONE_DIR = "galw_phase1"
#: Phase one's initial weights (after MODEL.WEIGHTS was loaded), phase two's MODEL.WEIGHTS.
INIT_WEIGHTS = "galw_init.pth"
#: Phase one's settings (the config keys its groups and initial weights depend on), beside its groups.
PHASE_ONE_RECORD = "galw_phase1_config.json"
#: Keys phase one's results do not depend on: where outputs go, evaluation, checkpoint frequency, the
#: loader's worker count (the data does not depend on it) and phase two's weighting.
_NOT_PHASE_ONE = ("OUTPUT_DIR", "TEST.", "DATASETS.TEST", "SOLVER.CHECKPOINT_PERIOD", "DATALOADER.NUM_WORKERS",
                  "VIS_PERIOD", "CUDNN_BENCHMARK", "MODEL.GALW.WEIGHTING")


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
    if os.path.isfile(groups_file):
        _check_reusable(one, resume)
    if not phase_two_started and not os.path.isfile(groups_file):
        logger.info("GALW phase one: recording Gamma in %s", one.OUTPUT_DIR)
        if comm.is_main_process():
            os.makedirs(one.OUTPUT_DIR, exist_ok=True)
            settings = json.dumps({"settings": phase_one_settings(one)}, indent=1, sort_keys=True)
            atomic_write(os.path.join(one.OUTPUT_DIR, PHASE_ONE_RECORD), lambda f: f.write(settings.encode()))
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


def phase_one_settings(one) -> dict:
    """{dotted key: value} of phase one's config, without the keys its results do not depend on
    (lambda, the bound on sigma and the manual weights count only when phase one weights with them)."""
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v

    walk(one, "")
    skip = list(_NOT_PHASE_ONE)
    if one.MODEL.GALW.PROBE_WEIGHTING != "rulwf":
        skip.append("MODEL.GALW.LAMBDA")
    if one.MODEL.GALW.PROBE_WEIGHTING not in ("ulwf", "rulwf"):
        skip.append("MODEL.GALW.MAX_GROUP_WEIGHT")
    if one.MODEL.GALW.PROBE_WEIGHTING != "manual":
        skip.append("MODEL.GALW.MANUAL_WEIGHTS")
    return {k: v for k, v in flat.items() if not any(k == s or (s.endswith(".") and k.startswith(s)) for s in skip)}


def _check_reusable(one, resume: bool):
    """Phase one's groups are reused when its recorded settings match; with ``--resume`` they are
    reused anyway (differences logged). Otherwise raise naming the file and the differing keys."""
    record = os.path.join(one.OUTPUT_DIR, PHASE_ONE_RECORD)
    groups = os.path.join(one.OUTPUT_DIR, GROUPS_FILENAME)
    try:
        with open(record) as f:
            recorded = json.load(f)["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        if resume:
            logger.warning("GALW: reusing %s (--resume) although %s is unreadable: %s", groups, record, e)
            return
        raise ValueError(
            f"GALW: {groups} exists, but {record}, which records the settings it was made with, cannot be "
            f"read ({e}); pass --resume to reuse that phase one, or remove {one.OUTPUT_DIR}"
        ) from None
    now = json.loads(json.dumps(phase_one_settings(one)))  # tuples as lists, as recorded
    differ = sorted(k for k in set(recorded) | set(now) if recorded.get(k, "<absent>") != now.get(k, "<absent>"))
    if not differ:
        logger.info("GALW: phase one's settings match %s: reusing %s", record, groups)
        return
    listing = "; ".join(f"{k}: recorded {recorded.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}"
                        for k in differ)
    if resume:
        logger.warning("GALW: reusing %s (--resume) although the settings differ from %s: %s", groups, record, listing)
        return
    raise ValueError(
        f"GALW: {groups} was made by a phase one with other settings (recorded in {record}): {listing}. "
        f"Pass --resume to reuse it anyway, or remove {one.OUTPUT_DIR} to train phase one again"
    )
