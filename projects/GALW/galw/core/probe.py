"""Per-task gradient magnitude on the shared parameters (paper Eq. 6), without touching training.

Gamma_t = (1/M) * sum_m ||d L_t / d theta_m||_2 over the M shared parameter tensors,
for the raw (unweighted) loss L_t of each task: the task's own pull on the shared layers,
independent of the weighting in use. Gradients come from ``torch.autograd.grad`` with
``retain_graph=True`` and the shared tensors as the only inputs, so nothing is written to
``.grad``, the optimizer never sees them, and the following backward is unchanged.
"""
import logging
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

import detectron2.utils.comm as comm

__all__ = ["GradientProbe", "select_shared_parameters"]

logger = logging.getLogger(__name__)


def select_shared_parameters(model: nn.Module, prefixes: Sequence[str]) -> List[Tuple[str, nn.Parameter]]:
    """Trainable parameters whose name starts with one of ``prefixes`` (model order)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if not prefixes:
        raise ValueError("MODEL.GALW.SHARED_PARAM_PREFIXES is empty: name the shared layers' prefixes")
    chosen = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad and any(n.startswith(x) for x in prefixes)
    ]
    if not chosen:
        names = [n for n, p in model.named_parameters() if p.requires_grad][:8]
        raise ValueError(
            f"MODEL.GALW.SHARED_PARAM_PREFIXES {list(prefixes)} match no trainable parameter; "
            f"trainable parameter names start like {names}"
        )
    return chosen


class GradientProbe:
    """Measures Gamma per task when ``due`` is set (the GALW hook sets it before a step)."""

    def __init__(self, shared: Sequence[Tuple[str, nn.Parameter]], batched: bool = False):
        """
        Args:
            shared: (name, parameter) of the shared layers, e.g. from :func:`select_shared_parameters`.
            batched: all tasks in one vmapped backward (``is_grads_batched=True``) instead of one
                backward per task; same values, speed depends on the model (see docs/galw.md).
        """
        self.names = [n for n, _ in shared]
        self.params = [p for _, p in shared]
        self.batched = batched
        self.due = False
        self.last: Dict[str, float] = {}

    @torch.no_grad()
    def _reduce(self, tasks, gammas: torch.Tensor) -> Dict[str, float]:
        if comm.get_world_size() > 1:
            gammas = gammas.clone()
            torch.distributed.all_reduce(gammas)
            gammas /= comm.get_world_size()
        return dict(zip(tasks, gammas.tolist()))

    def measure(self, loss_dict: Dict[str, torch.Tensor], tasks: Sequence[str], scale: float = 1.0):
        """{task: Gamma}, averaged over ranks. ``scale``: an AMP loss scale to undo."""
        tasks = list(tasks)
        losses = [loss_dict[t] for t in tasks]
        device = self.params[0].device
        if self.batched:
            gammas = self._batched(losses, scale, device)
        else:
            gammas = torch.stack([self._one(loss, scale, device) for loss in losses])
        self.last = self._reduce(tasks, gammas.detach().float().cpu())
        return self.last

    def _one(self, loss, scale, device):
        if not loss.requires_grad:
            return torch.zeros((), device=device)
        grads = torch.autograd.grad(loss * scale, self.params, retain_graph=True, allow_unused=True)
        norms = [g.detach().float().norm() for g in grads if g is not None]
        if not norms:
            return torch.zeros((), device=device)
        return torch.stack(norms).sum() / (len(self.params) * scale)

    def _batched(self, losses, scale, device):
        live = [i for i, loss in enumerate(losses) if loss.requires_grad]
        out = torch.zeros(len(losses), device=device)
        if not live:
            return out
        stacked = torch.stack([losses[i].reshape(()) * scale for i in live])
        eye = torch.eye(len(live), device=stacked.device, dtype=stacked.dtype)
        grads = torch.autograd.grad(
            stacked, self.params, grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        total = torch.zeros(len(live), device=device)
        for g in grads:
            if g is not None:
                total += g.detach().float().reshape(len(live), -1).norm(dim=1)
        out[live] = total / (len(self.params) * scale)
        return out
