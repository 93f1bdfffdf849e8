"""Phase one's record stays the settings its checkpoints were trained with, and bad phase-one
settings fail before phase one writes a file.

Cases:
- test_resume_of_interrupted_phase_one_under_other_settings_fails_naming_keys: the record is unchanged.
- test_resume_of_interrupted_phase_one_under_same_settings_continues
- test_forced_mixed_phase_one_is_recorded_and_never_matches: --mixed-phase-one continues, logged;
  the record keeps the first settings and notes the change; a later run does not take it as matching.
- test_phase_one_init_weights_carry_their_sha256
- test_steps_at_or_beyond_phase_one_max_iter_are_dropped: logged; the scheduler builds.
- test_unknown_task_fails_before_phase_one_writes_a_file: train_net.py, the message names the task.
- test_phase_one_only_stops_after_its_files_and_phase_two_trains_from_them
- test_phase_one_only_needs_a_two_phase_config: train_net.py, the message names the keys.
"""
import hashlib
import json
import logging
import os

import pytest
import torch
from detectron2.solver import build_lr_scheduler

import train_net
from conftest import CONFIG_DIR
from galw_core.two_phase import INIT_WEIGHTS, PHASE_ONE_DIR, PHASE_ONE_RECORD, phase_configs, train_two_phase
from galw_helpers import PLANTED, toy_cfg


class _Interrupted(Exception):
    """Stands for a kill in phase one after a checkpoint."""


class _Trainer:
    """Stands for the person-search Trainer: phase one checkpoints, then is killed (``interrupt``)
    or writes its groups; ``start_iter`` follows the checkpoint on resume."""

    interrupt = True
    built = []

    def __init__(self, cfg):
        self.cfg, self.model, self.start_iter = cfg, torch.nn.Linear(1, 1), 0
        _Trainer.built.append(os.path.basename(cfg.OUTPUT_DIR))

    def resume_or_load(self, resume):
        if resume and os.path.isfile(os.path.join(self.cfg.OUTPUT_DIR, "last_checkpoint")):
            self.start_iter = 3

    def train(self):
        out = self.cfg.OUTPUT_DIR
        if os.path.basename(out) != PHASE_ONE_DIR:
            return
        with open(os.path.join(out, "last_checkpoint"), "w") as f:
            f.write("model_0000002.pth")
        if _Trainer.interrupt:
            raise _Interrupted()
        with open(os.path.join(out, "galw_groups.json"), "w") as f:
            json.dump({"groups": PLANTED}, f)


def _run(out, *opts, resume=False, interrupt=False, mixed=False, phase_one_only=False):
    _Trainer.built, _Trainer.interrupt = [], interrupt
    cfg = toy_cfg(out, "MODEL.GALW.MODE", "two_phase", "MODEL.GALW.PROBE_EPOCHS", 0, *opts)
    train_two_phase(cfg, _Trainer, resume=resume, mixed_phase_one=mixed, phase_one_only=phase_one_only)
    return _Trainer.built


def _interrupted_phase_one(out):
    with pytest.raises(_Interrupted):
        _run(out, interrupt=True)
    record = out / PHASE_ONE_DIR / PHASE_ONE_RECORD
    return record, record.read_text()


def test_resume_of_interrupted_phase_one_under_other_settings_fails_naming_keys(tmp_path):
    out = tmp_path / "run"
    record, before = _interrupted_phase_one(out)
    with pytest.raises(ValueError, match=(
            rf"--resume of the interrupted phase one in {out / PHASE_ONE_DIR}: its checkpoints were trained with "
            rf"other settings \(recorded in {record}\): MODEL.GALW.NUM_GROUPS: recorded 3, now 2; "
            r"SOLVER.BASE_LR: recorded 0.0001, now 0.001\. .*--mixed-phase-one")):
        _run(out, "MODEL.GALW.NUM_GROUPS", 2, "SOLVER.BASE_LR", 1e-3, resume=True)
    assert _Trainer.built == []
    assert record.read_text() == before


def test_resume_of_interrupted_phase_one_under_same_settings_continues(tmp_path):
    out = tmp_path / "run"
    record, before = _interrupted_phase_one(out)
    assert _run(out, "TEST.EVAL_PERIOD", 7, resume=True) == [PHASE_ONE_DIR, "run"]
    assert json.loads(record.read_text()) == json.loads(before)


def test_forced_mixed_phase_one_is_recorded_and_never_matches(tmp_path, caplog):
    out = tmp_path / "run"
    record, before = _interrupted_phase_one(out)
    with caplog.at_level(logging.WARNING, logger="galw_core"):
        assert _run(out, "SOLVER.BASE_LR", 1e-3, resume=True, mixed=True) == [PHASE_ONE_DIR, "run"]
    assert "continues under other settings from iteration 3 (--mixed-phase-one): SOLVER.BASE_LR" in caplog.text
    saved = json.loads(record.read_text())
    assert saved["settings"] == json.loads(before)["settings"]  # what the first iterations were trained with
    assert saved["mixed"] == [{"from_iteration": 3, "settings": {"SOLVER.BASE_LR": 1e-3}}]
    # Neither setting matches a phase one trained with both.
    for lr in (1e-4, 1e-3):
        with pytest.raises(ValueError, match=r"trained with mixed settings .*SOLVER.BASE_LR: 0.001 from iteration 3"):
            _run(out, "SOLVER.BASE_LR", lr)


def test_phase_one_init_weights_carry_their_sha256(tmp_path):
    out = tmp_path / "run"
    _run(out)
    init = out / PHASE_ONE_DIR / INIT_WEIGHTS
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    assert (out / PHASE_ONE_DIR / f"{INIT_WEIGHTS}.sha256").read_text() == f"{digest}  {INIT_WEIGHTS}\n"


def test_steps_at_or_beyond_phase_one_max_iter_are_dropped(tmp_path, caplog):
    # Phase one: 2 epochs of 5 iterations = 10; the milestones 10 and 12 are not inside it.
    cfg = toy_cfg(tmp_path, "MODEL.GALW.MODE", "two_phase", "MODEL.GALW.PROBE_EPOCHS", 2, "SOLVER.MAX_ITER", 20,
                  "SOLVER.STEPS", (4, 10, 12))
    with caplog.at_level(logging.INFO, logger="galw_core"):
        one, two = phase_configs(cfg)
    assert one.SOLVER.MAX_ITER == 10 and tuple(one.SOLVER.STEPS) == (4,)
    assert tuple(two.SOLVER.STEPS) == (4, 10, 12)
    assert "SOLVER.STEPS 10, 12 dropped: phase one lasts 10 iterations" in caplog.text
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    build_lr_scheduler(one, optimizer)  # milestones must be < MAX_ITER


def test_unknown_task_fails_before_phase_one_writes_a_file(tmp_path):
    out = tmp_path / "run"
    tasks = ["loss_aps_cls", "loss_aps_box", "loss_aps_ctr", "loss_aps_oim", "loss_aps_trip"]
    argv = ["--config-file", os.path.join(CONFIG_DIR, "alignps", "alignps_R18_synth_galw.yaml"),
            "OUTPUT_DIR", str(out), "MODEL.GALW.TASKS", str(tasks), "MODEL.GALW.EPOCH_ITERS", "2",
            "SOLVER.MAX_ITER", "4", "DATASETS.TRAIN", "('galw_test_unregistered',)"]
    with pytest.raises(ValueError, match=(
            r"MODEL.GALW.TASKS: 'loss_aps_trip' is not a loss of the model \(MODEL.PERSON_SEARCH.BRANCHES "
            r"\['AlignPSBranch'\] give loss_aps_cls, loss_aps_box, loss_aps_ctr, loss_aps_oim, loss_aps_tri\)")):
        train_net.main(train_net.argument_parser().parse_args(argv))
    phase_one = out / PHASE_ONE_DIR
    assert not phase_one.exists() or os.listdir(phase_one) == []


def _record_without_precision(out):
    """Phase one's record as a run made before SOLVER.AMP.PRECISION existed wrote it."""
    record = out / PHASE_ONE_DIR / PHASE_ONE_RECORD
    saved = json.loads(record.read_text())
    del saved["settings"]["SOLVER.AMP.PRECISION"]
    record.write_text(json.dumps(saved))


def test_record_without_amp_precision_matches_a_run_without_amp(tmp_path):
    """A record from before SOLVER.AMP.PRECISION existed still matches; without AMP the key trains nothing."""
    out = tmp_path / "run"
    _interrupted_phase_one(out)
    _record_without_precision(out)
    assert _run(out, resume=True) == [PHASE_ONE_DIR, "run"]
    assert _run(out, "SOLVER.AMP.PRECISION", "bfloat16") == ["run"]  # phase one's groups reused


def test_record_without_amp_precision_under_amp_reads_float16(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(_Interrupted):
        _run(out, "SOLVER.AMP.ENABLED", True, interrupt=True)
    _record_without_precision(out)
    assert _run(out, "SOLVER.AMP.ENABLED", True, resume=True) == [PHASE_ONE_DIR, "run"]
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION: recorded 'float16', now 'bfloat16'"):
        _run(out, "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16")


def test_phase_one_only_stops_after_its_files_and_phase_two_trains_from_them(tmp_path):
    out = tmp_path / "run"
    assert _run(out, phase_one_only=True) == [PHASE_ONE_DIR]
    assert (out / PHASE_ONE_DIR / "galw_groups.json").is_file() and (out / PHASE_ONE_DIR / INIT_WEIGHTS).is_file()
    assert not (out / "last_checkpoint").exists()
    assert _run(out, phase_one_only=True) == []  # its files exist: nothing trains
    assert _run(out) == ["run"]  # phase two alone, from phase one's groups and weights
    os.remove(out / PHASE_ONE_DIR / INIT_WEIGHTS)
    with pytest.raises(FileNotFoundError, match=rf"galw_groups.json exists but its initial weights .*{INIT_WEIGHTS} do "
                                                rf"not; remove .*{PHASE_ONE_DIR} to run phase one again"):
        _run(out, phase_one_only=True)


def test_phase_one_only_needs_a_two_phase_config(tmp_path):
    argv = ["--config-file", os.path.join(CONFIG_DIR, "alignps", "alignps_R18_synth_galw.yaml"), "--galw-phase-one-only",
            "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.GALW.MODE", "single_run"]
    with pytest.raises(ValueError, match=r"--galw-phase-one-only needs a GALW two-phase config: MODEL.GALW.ENABLED "
                                         r"True, MODE 'two_phase', GROUPING 'galw' and no MODEL.GALW.GROUPS_FILE"):
        train_net.main(train_net.argument_parser().parse_args(argv))
    assert not (tmp_path / "run" / "last_checkpoint").exists()
