"""Algorithm 1 end to end on the toy multi-task model: the real probe and hook recover the
planted task clusters, switch at the configured point, keep state across resume, and the
probe leaves the training trajectory unchanged."""
import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine.hooks import PeriodicCheckpointer

from galw_core.hook import GROUPS_FILENAME
from galw_helpers import PLANTED, TOY_TASKS, toy_cfg, toy_training


def test_planted_clusters_recovered_and_switch(tmp_path):
    cfg = toy_cfg(tmp_path)  # single_run, 4 epochs of 5 iterations, probe every iteration, G = 3
    step, hook = toy_training(cfg)
    step.train(0, 24)
    assert hook.groups == PLANTED
    assert hook.phase == "grouped" and hook.switch_iter == 20
    assert all(len(v) == 4 for v in hook.gamma_history.values())
    saved = json.loads((tmp_path / GROUPS_FILENAME).read_text())
    assert saved["groups"] == PLANTED and saved["num_groups"] == 3 and saved["linkage"] == "ward"
    assert saved["iteration"] == 19
    assert set(saved["s_star"]) == set(saved["slopes"]) == set(saved["gamma_history"]) == set(TOY_TASKS)
    assert saved["s_star"]["loss_t0"] > 0.3 > abs(saved["s_star"]["loss_t2"]) and saved["s_star"]["loss_t4"] < -0.1
    w = step.weighting
    assert w.method == "rulwf" and w.groups == PLANTED and w.task_slot.tolist() == [2, 2, 1, 1, 0, 0]
    sig = w.sigmas()
    assert len({round(s, 6) for s in sig.values()}) == 3  # the groups' sigmas moved apart
    weights = w.task_weights()  # 1/(k sigma_g^2): t0 (cls) vs t5 (reg) differ, t0 == t1 (same group, same k)
    assert weights["loss_t0"] == weights["loss_t1"] != weights["loss_t5"]
    storage = step.storage
    assert len(storage.history("galw/gamma/loss_t0").values()) == 20
    assert "galw/group_weight/g2" in storage.histories() and "galw/raw/loss_t3" in storage.histories()


def test_batched_probe_gives_the_same_groups(tmp_path):
    step, hook = toy_training(toy_cfg(tmp_path, "MODEL.GALW.PROBE_BATCHED", True))
    step.train(0, 20)
    ref_step, ref_hook = toy_training(toy_cfg(tmp_path / "ref"))
    ref_step.train(0, 20)
    assert hook.groups == ref_hook.groups == PLANTED
    for t in TOY_TASKS:
        assert torch.allclose(torch.tensor(hook.gamma_history[t]), torch.tensor(ref_hook.gamma_history[t]), rtol=1e-4)


def test_probe_does_not_change_the_trajectory(tmp_path):
    # Probing every iteration vs never probing (the period exceeds the run): identical weights.
    probed, _ = toy_training(toy_cfg(tmp_path / "a", "MODEL.GALW.PROBE_EPOCHS", 10))
    probed.train(0, 12)
    plain, plain_hook = toy_training(toy_cfg(tmp_path / "b", "MODEL.GALW.PROBE_EPOCHS", 10))
    plain_hook.probe_period = 10**9
    plain.train(1, 13)  # iteration % period is never 0: never probed
    assert len(probed.storage.history("galw/gamma/loss_t0").values()) == 12
    assert "galw/gamma/loss_t0" not in plain.storage.histories()
    a, b = probed.model.state_dict(), plain.model.state_dict()
    for k in a:
        if k != "iteration":
            assert torch.equal(a[k], b[k]), k


def _run_with_checkpoints(out, start, max_iter, resume):
    cfg = toy_cfg(out)
    step, hook = toy_training(cfg)
    ckpt = DetectionCheckpointer(step.model, str(out), trainer=step)
    step.register_hooks([PeriodicCheckpointer(ckpt, 12)])
    if resume:
        ckpt.resume_or_load("", resume=True)
        start = step.iter + 1
    step.train(start, max_iter)
    return step, hook


def test_resume_keeps_groups_phase_and_sigmas(tmp_path):
    full, full_hook = _run_with_checkpoints(tmp_path, 0, 24, resume=False)  # checkpoints after iter 11 and 23
    sigmas = full.weighting.sigmas()
    # Resume from the last checkpoint (grouped phase) and continue.
    again, hook = _run_with_checkpoints(tmp_path, None, 26, resume=True)
    assert hook.phase == "grouped" and hook.groups == full_hook.groups == PLANTED
    assert hook.switch_iter == 20 and hook.gamma_history == full_hook.gamma_history
    assert again.weighting.groups == PLANTED and again.weighting.method == "rulwf"
    # Resume from the mid-probing checkpoint: same phase and Gamma history so far.
    (tmp_path / "last_checkpoint").write_text("model_0000011.pth")
    mid = torch.load(tmp_path / "model_0000011.pth", map_location="cpu")
    assert mid["trainer"]["hooks"]["GALWHook"]["phase"] == "probing"
    probing, phook = _run_with_checkpoints(tmp_path, None, 12, resume=True)  # loads, runs nothing
    assert phook.phase == "probing" and probing.weighting.method == "equal"
    assert phook.gamma_history == {t: v[:2] for t, v in full_hook.gamma_history.items()}
    assert phook._epoch_count == 2  # iterations 10 and 11 of epoch 3 were probed
    assert sigmas != {}


def _first_gammas(cfg):
    step, hook = toy_training(cfg)
    step.train(0, 1)
    return step, hook, {t: step.storage.history(f"galw/gamma/{t}").values()[0][0] for t in TOY_TASKS}


def test_phase_one_with_manual_weights_measures_gamma_of_the_weighted_losses(tmp_path):
    """PROBE_WEIGHTING manual (the ROI-AlignPS* paper configs): phase one trains with the manual
    weights, and Gamma at the first probe (same weights and batch) is each task's equal-weight Gamma
    times its weight; with GAMMA_LOSS raw it is the equal-weight Gamma itself."""
    from detectron2.engine import SimpleTrainer

    from galw_core.train_step import galw_train_step

    weights = [1.0, 2.0, 3.0, 0.5, 4.0, 10.0]
    manual = ["MODEL.GALW.PROBE_WEIGHTING", "manual", "MODEL.GALW.MANUAL_WEIGHTS", weights]
    _, _, equal = _first_gammas(toy_cfg(tmp_path / "equal"))
    step, hook, weighted = _first_gammas(toy_cfg(tmp_path / "manual", *manual))
    assert hook.phase == "probing" and step.weighting.method == "manual"
    assert step.weighting.task_weights() == dict(zip(TOY_TASKS, weights))
    _, _, raw = _first_gammas(toy_cfg(tmp_path / "raw", *manual, "MODEL.GALW.GAMMA_LOSS", "raw"))
    for t, w in zip(TOY_TASKS, weights):
        assert weighted[t] == pytest.approx(w * equal[t], rel=1e-5), t
        assert raw[t] == pytest.approx(equal[t], rel=1e-5), t
    # The trainer's GALW step takes GAMMA_LOSS from the config.
    inner = SimpleTrainer(step.model, iter([]), step.optimizer)
    assert galw_train_step(inner, toy_cfg(tmp_path, "MODEL.GALW.GAMMA_LOSS", "raw")).gamma_loss == "raw"
