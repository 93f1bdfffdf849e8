"""GALW under AMP: the probe measures Gamma of the unscaled losses whatever the loss scale.

The CPU test checks the logic (GradientProbe.measure's ``scale``); the GPU test runs the real
GALWAMPTrainer step (autocast + GradScaler) against the fp32 step on the same weights and batch.
"""
import pytest
import torch
from detectron2.utils.events import EventStorage

from galw_core.probe import GradientProbe, select_shared_parameters
from galw_core.toy import ToyMultiTask, toy_batches
from galw_core.solver import build_optimizer
from galw_core.train_step import GALWAMPTrainer, GALWSimpleTrainer, attach_weighting
from galw_helpers import TOY_TASKS, toy_cfg


@pytest.mark.parametrize("batched", [False, True])
def test_probe_undoes_a_loss_scale(batched):
    torch.manual_seed(0)
    model = ToyMultiTask()
    losses = model(next(toy_batches(batch_size=2, size=16)))
    shared = select_shared_parameters(model, ["backbone.res"])
    plain = GradientProbe(shared, batched=batched).measure(losses, TOY_TASKS)
    scaled = GradientProbe(shared, batched=batched).measure(losses, TOY_TASKS, scale=2.0**16)
    assert all(g > 0 for g in plain.values())
    assert scaled == pytest.approx(plain, rel=1e-5)


def _first_probe(step_cls, cfg):
    """Gamma measured by one training step of ``step_cls`` on CUDA (same weights and batch each call)."""
    torch.manual_seed(0)
    model = attach_weighting(ToyMultiTask(epoch_iters=cfg.MODEL.GALW.EPOCH_ITERS), cfg).cuda()
    data = (b.cuda() for b in toy_batches(batch_size=2, size=16))
    probe = GradientProbe(select_shared_parameters(model, cfg.MODEL.GALW.SHARED_PARAM_PREFIXES))
    step = step_cls(model, data, build_optimizer(cfg, model), probe=probe)
    probe.due = True
    with EventStorage(0) as storage:
        step.iter = storage.iter = 0
        step.run_step()
    return probe.last, step


@pytest.mark.gpu
def test_amp_step_probes_the_unscaled_gamma():
    cfg = toy_cfg("")
    fp32, _ = _first_probe(GALWSimpleTrainer, cfg)
    amp, step = _first_probe(GALWAMPTrainer, cfg)
    assert step.grad_scaler.get_scale() > 1  # the scale is there to be undone
    assert amp == pytest.approx(fp32, rel=0.05)  # fp16 forward: close, not equal
