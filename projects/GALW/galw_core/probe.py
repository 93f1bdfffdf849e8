"""Per-task gradient magnitude on the shared parameters (paper Eq. 6), without touching training.

Gamma_t = (1/M) * sum_m ||d L_t / d theta_m||_2 over the M shared parameter tensors,
for the raw (unweighted) loss L_t of each task: the task's own pull on the shared layers,
independent of the weighting in use. Gradients come from ``torch.autograd.grad`` with
``retain_graph=True`` and the shared tensors as the only inputs, so nothing is written to
``.grad``, the optimizer never sees them, and the following backward is unchanged.

Under data parallelism each task's gradient is averaged over ranks BEFORE the norms, as DDP
averages the training gradient: Gamma on N processes with B/N images each equals Gamma on one
process with B images (a mean of per-rank norms would be larger, and grow with N).
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .distributed import all_reduce_mean_

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
    """Measures Gamma per task when ``due`` is set (the GALW hook sets it before a step).

    A measurement the hook must not record (non-finite Gamma; or, set by the AMP train step,
    a step GradScaler skipped) carries its reason in ``rejected``.
    """

    def __init__(self, shared: Sequence[Tuple[str, nn.Parameter]], batched: bool = False):
        """
        Args:
            shared: (name, parameter) of the shared layers, e.g. from :func:`select_shared_parameters`.
            batched: all tasks in one vmapped backward (``is_grads_batched=True``) instead of one
                backward per task; same values, speed depends on the model (see docs/galw.md).
        """
        self.names = [n for n, _ in shared]
        self.params = [p for _, p in shared]
        self.sizes = [p.numel() for p in self.params]
        self.batched = batched
        self.due = False
        self.last: Dict[str, float] = {}
        self.rejected: Optional[str] = None

    def measure(self, loss_dict: Dict[str, torch.Tensor], tasks: Sequence[str], scale: float = 1.0):
        """{task: Gamma} of the gradients averaged over ranks. ``scale``: an AMP loss scale to undo."""
        tasks = list(tasks)
        losses = [loss_dict[t] for t in tasks]
        if self.batched:
            gammas = self._gammas(self._batched_grads(losses, scale), scale)
        else:
            gammas = torch.cat([self._gammas(self._task_grad(loss, scale)[None], scale) for loss in losses])
        self.last = dict(zip(tasks, gammas.tolist()))
        bad = [t for t, v in self.last.items() if not math.isfinite(v)]
        self.rejected = f"non-finite Gamma for {bad} (loss scale {scale:g})" if bad else None
        return self.last

    def reject(self, reason: str):
        """Mark the last measurement as not to be recorded (e.g. its step was skipped)."""
        self.rejected = reason

    @torch.no_grad()
    def _gammas(self, grads: torch.Tensor, scale: float) -> torch.Tensor:
        """[T, P] flat gradients of the scaled losses (this rank) -> [T] Gamma of their mean over ranks.

        Unscaled before the norms: a norm of AMP-scaled gradients can overflow float32 where the
        gradients themselves do not."""
        all_reduce_mean_(grads.div_(scale))
        norms = torch.stack([g.norm(dim=1) for g in grads.split(self.sizes, dim=1)], dim=1)
        return norms.sum(dim=1) / len(self.params)

    def _flat(self, grads, leading=()) -> torch.Tensor:
        """Concatenated fp32 gradients, zeros for parameters a loss does not reach."""
        device = self.params[0].device
        return torch.cat(
            [
                (g.detach().float() if g is not None else torch.zeros(leading + p.shape, device=device))
                .reshape(leading + (-1,))
                for g, p in zip(grads, self.params)
            ],
            dim=-1,
        )

    def _task_grad(self, loss, scale) -> torch.Tensor:
        if not loss.requires_grad:  # still joins the all-reduce: every rank reduces every task
            return torch.zeros(sum(self.sizes), device=self.params[0].device)
        grads = torch.autograd.grad(loss * scale, self.params, retain_graph=True, allow_unused=True)
        return self._flat(grads)

    def _batched_grads(self, losses, scale) -> torch.Tensor:
        out = torch.zeros(len(losses), sum(self.sizes), device=self.params[0].device)
        live = [i for i, loss in enumerate(losses) if loss.requires_grad]
        if not live:
            return out
        stacked = torch.stack([losses[i].reshape(()) * scale for i in live])
        eye = torch.eye(len(live), device=stacked.device, dtype=stacked.dtype)
        grads = torch.autograd.grad(
            stacked, self.params, grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        out[live] = self._flat(grads, leading=(len(live),))
        return out
