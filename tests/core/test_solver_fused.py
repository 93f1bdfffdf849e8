"""The CPU optimizer: torch's fused SGD kernel, equal to torch's per-tensor SGD step for step, also
when a parameter gets its first gradient after the first step (a branch that joins the loss later)."""
import pytest
import torch
from torch import nn

from galw_core.solver import build_optimizer

from galw_helpers import toy_cfg


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 3)
        self.late = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(3)


def _losses(model, step, x):
    h = model.norm(model.trunk(x))
    loss = h.square().mean()
    if step >= 2:  # the late head joins the loss at the third step
        loss = loss + model.late(h).abs().mean()
    return loss


def _train(model, optimizer, steps=5):
    torch.manual_seed(1)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        _losses(model, step, torch.randn(8, 4)).backward()
        optimizer.step()


@pytest.mark.parametrize("nesterov", [False, True])
def test_cpu_sgd_is_fused_and_matches_torch_sgd_when_a_parameter_joins_late(nesterov):
    cfg = toy_cfg("", "SOLVER.BASE_LR", 0.1, "SOLVER.WEIGHT_DECAY", 1e-3, "SOLVER.CLIP_GRADIENTS.ENABLED", False,
                  "SOLVER.NESTEROV", nesterov)
    torch.manual_seed(0)
    ours_model = TwoHeads()
    ref_model = TwoHeads()
    ref_model.load_state_dict(ours_model.state_dict())
    ours = build_optimizer(cfg, ours_model)
    assert ours.param_groups and all(g["fused"] for g in ours.param_groups)
    ref = torch.optim.SGD(
        [dict(g, params=[dict(ref_model.named_parameters())[n] for n, p in ours_model.named_parameters()
                         if any(p is q for q in g["params"])], fused=False, foreach=False)
         for g in ours.param_groups],
        lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY, nesterov=nesterov,
    )
    _train(ours_model, ours)
    _train(ref_model, ref)
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
    late = ours_model.late.weight
    torch.testing.assert_close(ours.state[late]["momentum_buffer"], ref.state[ref_model.late.weight]["momentum_buffer"],
                               rtol=1e-6, atol=1e-7)
    assert not torch.equal(late, TwoHeads().late.weight)  # it did train


def test_a_model_off_the_cpu_keeps_torch_default_sgd():
    """Fused only where every parameter is on the CPU (a meta-device model stands in for a GPU one)."""
    optimizer = build_optimizer(toy_cfg(""), TwoHeads().to("meta"))
    assert optimizer.param_groups and not any(g["fused"] for g in optimizer.param_groups)


def test_resume_keeps_the_fused_kernel_and_the_steps():
    """A checkpoint written by torch's unfused SGD (or on another device) loads into a fused CPU
    optimizer that stays fused, and the resumed steps equal an uninterrupted run's."""
    cfg = toy_cfg("", "SOLVER.BASE_LR", 0.1, "SOLVER.CLIP_GRADIENTS.ENABLED", False)
    torch.manual_seed(0)
    whole, part = TwoHeads(), TwoHeads()
    part.load_state_dict(whole.state_dict())
    _train(whole, build_optimizer(cfg, whole), steps=5)
    first = build_optimizer(cfg, part)
    _train(part, first, steps=3)
    state = first.state_dict()
    for group in state["param_groups"]:
        group.update(fused=False, foreach=False)  # as torch's default SGD writes it
    resumed = build_optimizer(cfg, part)
    resumed.load_state_dict(state)
    assert all(g["fused"] is True and g["foreach"] is None for g in resumed.param_groups)
    torch.manual_seed(1)
    for step in range(5):
        x = torch.randn(8, 4)
        if step >= 3:
            resumed.zero_grad(set_to_none=True)
            _losses(part, step, x).backward()
            resumed.step()
    for (name, p), q in zip(whole.named_parameters(), part.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)


def test_a_closure_runs_before_the_buffers_are_made_and_its_loss_returns():
    cfg = toy_cfg("", "SOLVER.CLIP_GRADIENTS.ENABLED", False)
    model = TwoHeads()
    optimizer = build_optimizer(cfg, model)
    x = torch.randn(8, 4)

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = _losses(model, 2, x)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss is not None and float(loss) > 0
    assert optimizer.state[model.late.weight]["momentum_buffer"] is not None


def test_dampening_is_refused_when_built():
    with pytest.raises(ValueError, match="dampening 0, got 0.1"):
        build_optimizer(toy_cfg(""), TwoHeads()).__class__(TwoHeads().parameters(), lr=0.1, momentum=0.9,
                                                           dampening=0.1)


def test_amp_grad_scaler_unscales_before_the_clipping_reads_the_gradients():
    """GradScaler hands an optimizer that says it supports AMP scaling (torch's fused SGD does) the
    still scaled gradients; the clipping in ``step`` must see them unscaled, as without fusing."""
    cfg = toy_cfg("", "SOLVER.BASE_LR", 0.1, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.CLIP_GRADIENTS.ENABLED", True,
                  "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.05)
    torch.manual_seed(0)
    model, ref = TwoHeads(), TwoHeads()
    ref.load_state_dict(model.state_dict())
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)
    scaler.scale(_losses(model, 2, x)).backward()
    scaler.step(optimizer)
    _losses(ref, 2, x).backward()
    torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.05)
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
