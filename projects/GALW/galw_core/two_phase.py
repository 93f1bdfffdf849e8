"""Algorithm 1's two trainings: a first one records Gamma and writes the groups, a second one
trains from the same initial weights with those groups (paper Sec. 3.2.2)."""
import json
import logging
import os

import detectron2.utils.comm as comm

from .content_hash import torch_save_with_sha256
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
    # detectron2's multi-step schedule needs every milestone below MAX_ITER (fvcore's
    # MultiStepParamScheduler raises on one equal to it); phase one's LR drops are those inside it.
    late = [s for s in one.SOLVER.STEPS if s >= one.SOLVER.MAX_ITER]
    if late:
        one.SOLVER.STEPS = tuple(s for s in one.SOLVER.STEPS if s < one.SOLVER.MAX_ITER)
        logger.info("GALW phase one: SOLVER.STEPS %s dropped: phase one lasts %d iterations (phase two keeps them)",
                    ", ".join(str(s) for s in late), one.SOLVER.MAX_ITER)
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


def train_two_phase(cfg, trainer_cls, resume: bool = False, mixed_phase_one: bool = False,
                    phase_one_only: bool = False):
    """Run (or resume) phase one unless its groups exist, then phase two; returns phase two's
    ``train()`` result. ``trainer_cls(cfg)`` must build a GALW-enabled DefaultTrainer.

    Resuming an interrupted phase one under settings other than its record's raises, naming the
    keys, unless ``mixed_phase_one``: then it continues, logged, and the record notes the change.
    ``phase_one_only``: stop once phase one's groups file and initial weights exist (returns None), e.g.
    to read the groups before the grouped training, or to give other runs that regroup its Gamma
    history (the paper's Table 4) the files of a run whose folder is gone."""
    one, two = phase_configs(cfg)
    groups_file = two.MODEL.GALW.GROUPS_FILE
    phase_two_started = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if os.path.isfile(groups_file):
        _check_reusable(one, resume)
    if not phase_two_started and not os.path.isfile(groups_file):
        logger.info("GALW phase one: recording Gamma in %s", one.OUTPUT_DIR)
        resumed = resume and os.path.isfile(os.path.join(one.OUTPUT_DIR, "last_checkpoint"))
        changed = _changed_since_record(one, mixed_phase_one) if resumed else None
        first = trainer_cls(one)  # builds the model: settings it rejects fail before phase one writes a file
        first.resume_or_load(resume=resume)
        if comm.is_main_process():
            _write_record(one, first.start_iter, changed)
        if first.start_iter == 0 and comm.is_main_process():
            _save_init_weights(first.model, two.MODEL.WEIGHTS)
        comm.synchronize()
        first.train()
        del first
    comm.synchronize()
    if not os.path.isfile(groups_file):
        raise FileNotFoundError(f"GALW phase one ended without writing {groups_file}")
    if phase_one_only:
        if not os.path.isfile(two.MODEL.WEIGHTS):
            raise FileNotFoundError(f"GALW phase one: {groups_file} exists but its initial weights {two.MODEL.WEIGHTS} "
                                    f"do not; remove {one.OUTPUT_DIR} to run phase one again")
        logger.info("GALW phase one only: groups in %s, initial weights in %s", groups_file, two.MODEL.WEIGHTS)
        return None
    logger.info("GALW phase two: training with the groups of %s", groups_file)
    second = trainer_cls(two)
    second.resume_or_load(resume=resume)
    return second.train()


def _save_init_weights(model, path):
    model = getattr(model, "module", model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch_save_with_sha256(path, {"model": model.state_dict()})
    logger.info("GALW: initial weights saved to %s", path)


def _read_record(path):
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record.get("settings"), dict):
        raise ValueError("no 'settings' mapping")
    return record


def _latest_settings(record) -> dict:
    """The settings phase one trains with now: its first ones, updated by each mixed resume."""
    settings = dict(record["settings"])
    for entry in record.get("mixed", []):
        settings.update(entry["settings"])
    return settings


def _comparable(settings) -> dict:
    """``settings`` as compared: SOLVER.AMP.PRECISION only where AMP is on (a run without AMP trains
    alike whatever it says), and float16, its default, where a record made before the key existed lacks it."""
    settings = dict(settings)
    if settings.get("SOLVER.AMP.ENABLED"):
        settings.setdefault("SOLVER.AMP.PRECISION", "float16")
    else:
        settings.pop("SOLVER.AMP.PRECISION", None)
    return settings


def _comparable_now(one) -> dict:
    """Phase one's settings now, as a record holds them (tuples as lists) and as compared (_comparable)."""
    return _comparable(json.loads(json.dumps(phase_one_settings(one))))


def _differences(recorded, now):
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k, "<absent>") != now.get(k, "<absent>"))


def _listing(keys, recorded, now):
    return "; ".join(f"{k}: recorded {recorded.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}" for k in keys)


def _changed_since_record(one, mixed_phase_one):
    """On ``--resume`` of an interrupted phase one: None when its settings are the record's (or no
    record can tell), else the changed keys, allowed only with ``mixed_phase_one``."""
    path = os.path.join(one.OUTPUT_DIR, PHASE_ONE_RECORD)
    try:
        recorded = _comparable(_latest_settings(_read_record(path)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("GALW: resuming phase one in %s without its settings record %s (%s): the settings it "
                       "was trained with cannot be checked", one.OUTPUT_DIR, path, e)
        return None
    now = _comparable_now(one)
    differ = _differences(recorded, now)
    if not differ:
        return None
    listing = _listing(differ, recorded, now)
    if not mixed_phase_one:
        raise ValueError(
            f"GALW: --resume of the interrupted phase one in {one.OUTPUT_DIR}: its checkpoints were trained with "
            f"other settings (recorded in {path}): {listing}. Resume with the recorded settings, pass "
            f"--mixed-phase-one to continue under the new ones (recorded as mixed), or remove {one.OUTPUT_DIR} "
            "to train phase one again"
        )
    return {"keys": differ, "now": {k: now.get(k) for k in differ}, "listing": listing}


def _write_record(one, start_iter, changed):
    """Phase one's settings record: written afresh when phase one starts at iteration 0; a mixed
    resume appends its changes; any other resume leaves the record as its checkpoints' settings."""
    path = os.path.join(one.OUTPUT_DIR, PHASE_ONE_RECORD)
    if start_iter == 0 or not os.path.isfile(path):
        record = {"settings": phase_one_settings(one)}
    elif changed:
        record = _read_record(path)
        record.setdefault("mixed", []).append({"from_iteration": int(start_iter), "settings": changed["now"]})
        logger.warning("GALW: phase one in %s continues under other settings from iteration %d (--mixed-phase-one): "
                       "%s; %s records it as mixed", one.OUTPUT_DIR, start_iter, changed["listing"], path)
    else:
        return
    os.makedirs(one.OUTPUT_DIR, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))


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
    """Phase one's groups are reused when its recorded settings match (a phase one trained under
    mixed settings never does); with ``--resume`` they are reused anyway (differences logged).
    Otherwise raise naming the file and the differing keys."""
    record_path = os.path.join(one.OUTPUT_DIR, PHASE_ONE_RECORD)
    groups = os.path.join(one.OUTPUT_DIR, GROUPS_FILENAME)
    try:
        record = _read_record(record_path)
        mixed = [(k, v, int(e["from_iteration"])) for e in record.get("mixed", []) for k, v in e["settings"].items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if resume:
            logger.warning("GALW: reusing %s (--resume) although %s is unreadable: %s", groups, record_path, e)
            return
        raise ValueError(
            f"GALW: {groups} exists, but {record_path}, which records the settings it was made with, cannot be "
            f"read ({e}); pass --resume to reuse that phase one, or remove {one.OUTPUT_DIR}"
        ) from None
    recorded = _comparable(record["settings"])
    now = _comparable_now(one)
    differ = _differences(recorded, now)
    if not differ and not mixed:
        logger.info("GALW: phase one's settings match %s: reusing %s", record_path, groups)
        return
    listing = _listing(differ, recorded, now)
    if mixed:
        changes = "; ".join(f"{k}: {v!r} from iteration {it}" for k, v, it in mixed)
        what = f"a phase one trained with mixed settings (recorded in {record_path}): {changes}"
        what += f"; and now {listing}" if listing else ""
    else:
        what = f"a phase one with other settings (recorded in {record_path}): {listing}"
    if resume:
        logger.warning("GALW: reusing %s (--resume) although it was made by %s", groups, what)
        return
    raise ValueError(
        f"GALW: {groups} was made by {what}. Pass --resume to reuse it anyway, or remove {one.OUTPUT_DIR} to "
        "train phase one again"
    )
