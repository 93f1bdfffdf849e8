"""GALW under AMP: a probe of a step that GradScaler skips (inf/NaN gradients) or with a non-finite
Gamma is not recorded (counted, logged, in EventStorage) and is retried at the next iteration; a
recorded Gamma is always finite; an epoch without a valid probe is an immediate error.

On the CPU: bfloat16 autocast and torch's GradScaler("cpu"), whose first scaled losses are made
infinite (as float16 gradients overflow at a too-high scale on a GPU), so that GradScaler itself
finds the inf gradients, skips those steps and backs off. The GPU tests run the real thing:
float16 autocast on CUDA."""
import math

import pytest
import torch

from detectron2.utils.events import EventStorage

from galw_core.hook import GALWHook
from galw_core.probe import GradientProbe, select_shared_parameters
from galw_core.toy import ToyMultiTask, toy_batches
from galw_core.solver import build_optimizer
from galw_core.train_step import GALWAMPTrainer, attach_weighting
from galw_helpers import PLANTED, toy_cfg


class OverflowingScaler(torch.amp.GradScaler):
    """torch's CPU GradScaler; the first ``n`` losses it scales become inf (a float16 overflow)."""

    def __init__(self, n, **kwargs):
        super().__init__("cpu", **kwargs)
        self.left = n

    def scale(self, outputs):
        if self.left > 0:
            self.left -= 1
            outputs = outputs * float("inf")
        return super().scale(outputs)


def _amp_training(cfg, device, precision, scaler):
    torch.manual_seed(0)
    model = attach_weighting(ToyMultiTask(epoch_iters=cfg.MODEL.GALW.EPOCH_ITERS), cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    probe = GradientProbe(select_shared_parameters(model, cfg.MODEL.GALW.SHARED_PARAM_PREFIXES))
    data = (x.to(device) for x in toy_batches(batch_size=2, size=16, seed=0))
    step = GALWAMPTrainer(model, data, optimizer, grad_scaler=scaler, precision=precision, probe=probe)
    hook = GALWHook(cfg, step, cfg.MODEL.GALW.EPOCH_ITERS)
    step.register_hooks([hook])
    return step, hook


def _train(step, max_iter):
    """step.train, keeping the EventStorage's history for the test."""
    histories = {}
    original = step.after_train

    def after_train():
        histories.update({k: v.values() for k, v in step.storage.histories().items()})
        original()

    step.after_train = after_train
    step.train(0, max_iter)
    return histories


def test_skipped_steps_are_not_recorded_and_probed_again(tmp_path, caplog):
    # One probe per epoch (PROBE_PERIOD = EPOCH_ITERS = 5): a rejected one is retried next iteration.
    cfg = toy_cfg(tmp_path, "MODEL.GALW.PROBE_PERIOD", 5)
    scaler = OverflowingScaler(2, init_scale=1024.0)
    step, hook = _amp_training(cfg, "cpu", torch.bfloat16, scaler)
    with caplog.at_level("WARNING", logger="galw"):
        histories = _train(step, 23)
    assert hook.probes_rejected == 2
    assert scaler.get_scale() == 256.0  # GradScaler skipped two steps (backoff 0.5 each)
    rejected = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(rejected) == hook.probes_rejected and "GradScaler skipped the step" in rejected[0]
    assert [it for _, it in histories["galw/probes_rejected"]] == list(range(hook.probes_rejected))
    # Gamma of epoch 0 is the first valid probe's (iteration = probes_rejected), then one per epoch.
    gamma_iters = [it for _, it in histories["galw/gamma/loss_t0"]]
    assert gamma_iters == [hook.probes_rejected, 5, 10, 15]
    assert all(math.isfinite(v) and v > 0 for h in hook.gamma_history.values() for v in h)
    assert all(len(h) == 4 for h in hook.gamma_history.values())
    assert hook.phase == "grouped" and hook.groups == PLANTED


def test_epoch_without_a_valid_probe_is_an_error(tmp_path):
    scaler = OverflowingScaler(10**6)  # every step overflows
    step, hook = _amp_training(toy_cfg(tmp_path), "cpu", torch.bfloat16, scaler)
    with pytest.raises(FloatingPointError, match=r"epoch 0 \(iterations 0\.\.4\) has no valid Gamma: all its 5 probes"):
        step.train(0, 23)
    assert hook.gamma_history["loss_t0"] == []


def test_non_finite_gamma_is_rejected():
    model = ToyMultiTask()
    probe = GradientProbe(select_shared_parameters(model, ["backbone."]))
    losses = model(next(toy_batches(batch_size=2, size=16)))
    losses["loss_t1"] = losses["loss_t1"] * float("inf")
    gammas = probe.measure(losses, model.task_names)
    assert not math.isfinite(gammas["loss_t1"]) and math.isfinite(gammas["loss_t0"])
    assert probe.rejected.startswith("non-finite Gamma for ['loss_t1']")
    probe.measure(model(next(toy_batches(batch_size=2, size=16))), model.task_names)
    assert probe.rejected is None


def test_rejection_state_is_checkpointed(tmp_path):
    cfg = toy_cfg(tmp_path, "MODEL.GALW.PROBE_PERIOD", 5)
    step, hook = _amp_training(cfg, "cpu", torch.bfloat16, OverflowingScaler(1))
    with EventStorage(0):
        step.iter = 0
        hook.before_train()
        hook.before_step()
        step.run_step()
        hook.after_step()
    state = hook.state_dict()
    assert state["probes_rejected"] == 1 and state["epoch_rejected"] == 1 and state["retry_probe"] is True
    _, other = _amp_training(cfg, "cpu", torch.bfloat16, torch.amp.GradScaler("cpu"))
    other.load_state_dict(state)
    assert other.state_dict() == state


@pytest.mark.gpu
def test_amp_on_cuda_records_finite_gamma(tmp_path):
    """The real path: float16 autocast on CUDA, GradScaler's default 65536 start."""
    cfg = toy_cfg(tmp_path)
    step, hook = _amp_training(cfg, "cuda", torch.float16, torch.amp.GradScaler("cuda"))
    step.train(0, 23)
    assert all(math.isfinite(v) and v > 0 for h in hook.gamma_history.values() for v in h)
    assert hook.phase == "grouped" and len(hook.groups) == 3


@pytest.mark.gpu
def test_amp_on_cuda_skips_overflowing_probes(tmp_path):
    """A start scale of 2**40 overflows float16 gradients; a 2**-16 backoff reaches a finite scale
    (2**24, then 2**8) within the 5-iteration first epoch, whose probe is then recorded."""
    cfg = toy_cfg(tmp_path, "MODEL.GALW.PROBE_PERIOD", 5)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40, backoff_factor=2.0**-16)
    step, hook = _amp_training(cfg, "cuda", torch.float16, scaler)
    step.train(0, 23)
    assert hook.probes_rejected >= 1
    assert all(math.isfinite(v) for h in hook.gamma_history.values() for v in h)
    assert hook.phase == "grouped"
