"""The CPU optimizer: torch's fused SGD kernel, equal to torch's per-tensor SGD step for step, also
when a parameter gets its first gradient after the first step (a branch that joins the loss later)."""
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


def test_cpu_sgd_is_fused_and_matches_torch_sgd_when_a_parameter_joins_late():
    cfg = toy_cfg("", "SOLVER.BASE_LR", 0.1, "SOLVER.WEIGHT_DECAY", 1e-3, "SOLVER.CLIP_GRADIENTS.ENABLED", False)
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
        lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
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
    """Fused only where every parameter is on the CPU: on CUDA, AMP's scaler hands a fused optimizer
    the scaled gradients, which the full-model clipping would read unscaled (a meta-device model
    stands in for a GPU one here)."""
    optimizer = build_optimizer(toy_cfg(""), TwoHeads().to("meta"))
    assert optimizer.param_groups and not any(g["fused"] for g in optimizer.param_groups)


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
