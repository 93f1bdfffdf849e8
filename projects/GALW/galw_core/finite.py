"""The GALW-weighted total and the sigmas are checked every step: with a huge learning rate the
weighted total (or a sigma) overflows while every raw loss stays finite, which detectron2's check
of the raw losses does not see."""
from typing import Dict

import torch

from .weighting import LossWeighting

__all__ = ["check_finite_step"]


def check_finite_step(weighting: LossWeighting, loss_dict: Dict[str, torch.Tensor], total: torch.Tensor,
                      iteration: int):
    """Raise FloatingPointError naming the tasks and groups when ``total`` or a sigma is not finite."""
    log_sigma = weighting.log_sigma.detach()
    ok = torch.isfinite(total.detach()).all() & torch.isfinite(log_sigma).all()
    if weighting.uses_sigma:
        ok = ok & torch.isfinite(torch.exp(log_sigma[: len(weighting.groups)])).all()
    if bool(ok):
        return
    slot = weighting.task_slot.tolist()
    group_of = {t: weighting.group_names[slot[i]] for i, t in enumerate(weighting.tasks)}
    weights = weighting.task_weights()
    problems = []
    for t in weighting.tasks:
        raw = float(loss_dict[t].detach())
        weighted = raw * weights[t]
        if not (torch.isfinite(torch.tensor(raw)) and torch.isfinite(torch.tensor(weighted))):
            problems.append(f"task {t} (group {group_of[t]}): raw loss {raw}, weight {weights[t]}")
    if weighting.uses_sigma:
        problems += [f"group {g}: sigma {s}" for g, s in weighting.sigmas().items()
                     if not torch.isfinite(torch.tensor(s)) or s == 0.0]
    if not torch.isfinite(log_sigma).all():
        problems.append(f"log_sigma {log_sigma.tolist()}")
    raise FloatingPointError(
        f"GALW: the {weighting.method}-weighted total loss is {float(total.detach())} at iteration "
        f"{iteration}; not finite: {'; '.join(problems) or 'the sum of finite weighted terms'} "
        "(lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS)"
    )
