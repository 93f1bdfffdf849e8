"""Loss weighting over a named loss dict: equal, manual, ULWF and RULWF, per task or per group.

RULWF (paper Eq. 5), per group g of tasks (Eq. 9; one task per group is the per-task case):

    L = sum_g [ (sum_{i in g} L_i / k_i) / sigma_g^2 + n_g log sigma_g + lambda * |sigma_g - 1| ]

with k_i = 1 for classification and 2 for regression. ``n_g`` is the number of tasks of the group
(``group_log_sigma="per_task"``: Eq. 9 read literally, each task's Eq. 5 loss keeps its own
log sigma term) or 1 (``"per_group"``: one log sigma per group); docs/galw.md argues the default.
ULWF (Kendall et al.) is the same without the lambda term. sigma is parametrised as ``sigma = exp(log_sigma)``: positive by
construction, and ``log sigma`` in the objective is the parameter itself.

For sigma < 1 the regulariser is at most lambda, so a group whose loss L goes to 0 has its
optimum at 1/sigma^2 ~ n/(2L): unbounded. ``max_group_weight`` projects log sigma onto
``log sigma >= -log(max_group_weight)/2`` before each use: where it does not bind, values and
gradients are those of the equations; where it binds, sigma can still rise again.

One ``log_sigma`` slot is allocated per task from the start; a (non-persistent) buffer maps
each task to the slot of its group. Switching from per-task to grouped weighting therefore never changes
the optimizer's parameter set, so checkpoints and ``--resume`` stay simple.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Set

import torch
from torch import nn

from detectron2.config import configurable

from .config import GROUP_LOG_SIGMA, TASK_KIND_K, WEIGHTING_METHODS
from .validation import check_choice, check_galw_config, check_manual_weights, check_tasks, validate_groups

__all__ = ["LossWeighting"]

logger = logging.getLogger(__name__)


class LossWeighting(nn.Module):
    """Turns ``{task: loss}`` into the weighted total loss; holds the learnable sigmas."""

    @configurable
    def __init__(
        self,
        *,
        tasks: Sequence[str],
        task_kinds: Sequence[str],
        method: str = "rulwf",
        lam: float = 1.0,
        manual_weights: Optional[Sequence[float]] = None,
        group_log_sigma: str = "per_task",
        max_group_weight: float = 10.0,
    ):
        """
        Args:
            tasks: the loss-dict keys to weight, in a fixed order (slot i belongs to task i).
            task_kinds: "classification" (k=1) or "regression" (k=2) for each task.
            method: one of WEIGHTING_METHODS.
            lam: lambda of RULWF's regulariser |sigma - 1|.
            manual_weights: one weight per task, for method "manual".
            group_log_sigma: "per_task" (a group of n tasks carries n log sigma_g, Eq. 9 read
                literally) or "per_group" (one log sigma_g per group).
            max_group_weight: upper bound on each group's 1/sigma^2 (0: none).
        """
        super().__init__()
        tasks = list(tasks)
        check_tasks(tasks, task_kinds)
        check_choice("GROUP_LOG_SIGMA", group_log_sigma, GROUP_LOG_SIGMA)
        check_manual_weights(manual_weights, tasks, method)
        self.group_log_sigma = group_log_sigma
        self.max_group_weight = float(max_group_weight)
        self.log_sigma_min = -0.5 * math.log(max_group_weight) if max_group_weight > 0 else None
        #: Groups the trainer has warned about reaching the bound, or collapsing below its inverse
        #: (once each per run).
        self.groups_warned_at_bound: Set[str] = set()
        self.groups_warned_collapsed: Set[str] = set()
        self.tasks = tasks
        self.kinds = dict(zip(tasks, task_kinds))
        self.lam = float(lam)
        self.manual_weights = None
        if manual_weights is not None and len(manual_weights) > 0:
            self.manual_weights = dict(zip(tasks, (float(w) for w in manual_weights)))
        self.register_buffer("k", torch.tensor([TASK_KIND_K[k] for k in task_kinds]))
        # sigma = exp(log_sigma); log_sigma = 0 is sigma = 1, where RULWF's assumption is exact.
        self.log_sigma = nn.Parameter(torch.zeros(len(tasks)))
        # Task i uses slot task_slot[i]; per-task weighting is the identity mapping. Derived from
        # the grouping (whose source of truth is the GALW hook's checkpointed state), so it is not
        # saved: loading initial weights must not undo a grouping configured before.
        self.register_buffer("task_slot", torch.arange(len(tasks)), persistent=False)
        self.method = "equal"
        self.groups: List[List[str]] = [[t] for t in tasks]
        self.group_names: List[str] = list(tasks)
        self.configure(method, None)

    @classmethod
    def from_config(cls, cfg):
        check_galw_config(cfg)
        g = cfg.MODEL.GALW
        return {
            "tasks": list(g.TASKS),
            "task_kinds": list(g.TASK_KINDS),
            "method": g.WEIGHTING,
            "lam": g.LAMBDA,
            "manual_weights": list(g.MANUAL_WEIGHTS),
            "group_log_sigma": g.GROUP_LOG_SIGMA,
            "max_group_weight": g.MAX_GROUP_WEIGHT,
        }

    # ------------------------------------------------------------------ configuration
    def configure(self, method: str, groups: Optional[Sequence[Sequence[str]]]):
        """Select the weighting method and the grouping (None: one group per task).

        One group per task, in task order, is per-task weighting however it is given: its
        groups are named after the tasks (``g0, g1, ...`` name real groups).

        Raises naming the task when a task is in two groups or in none, or is unknown.
        Does not touch the sigma values (see :meth:`reset_sigmas`).
        """
        check_choice("WEIGHTING", method, WEIGHTING_METHODS)
        check_manual_weights(list(self.manual_weights.values()) if self.manual_weights else None, self.tasks, method)
        per_task = [[t] for t in self.tasks]
        groups = per_task if groups is None else [list(g) for g in groups]
        names = list(self.tasks) if groups == per_task else [f"g{i}" for i in range(len(groups))]
        validate_groups(groups, self.tasks)
        slot = {t: gi for gi, g in enumerate(groups) for t in g}
        self.task_slot.copy_(torch.tensor([slot[t] for t in self.tasks], device=self.task_slot.device))
        self.method = method
        self.groups = groups
        self.group_names = names

    @torch.no_grad()
    def reset_sigmas(self):
        """sigma = 1 in every slot (the start of a training with new groups)."""
        self.log_sigma.zero_()

    @property
    def uses_sigma(self) -> bool:
        return self.method in ("ulwf", "rulwf")

    def _bounded_log_sigma(self) -> torch.Tensor:
        """log sigma as the objective uses it (the optimizer may have stepped past the bound)."""
        log_sigma = self.log_sigma.detach()
        return log_sigma if self.log_sigma_min is None else log_sigma.clamp(min=self.log_sigma_min)

    def groups_at_bound(self) -> List[str]:
        """Names of the groups whose sigma sits at ``max_group_weight`` (none without a bound)."""
        if self.log_sigma_min is None or not self.uses_sigma:
            return []
        at = (self.log_sigma.detach()[: len(self.groups)] <= self.log_sigma_min + 1e-6).tolist()
        return [name for name, hit in zip(self.group_names, at) if hit]

    def groups_collapsed(self) -> List[str]:
        """Names of the groups whose weight 1/sigma^2 is below ``1 / max_group_weight`` (none without
        a bound): their tasks train ``max_group_weight`` times slower than at sigma = 1. Not clamped:
        sigma grows where a loss stays large (the optimum is about n/(2L)), and only the log says so."""
        if self.log_sigma_min is None or not self.uses_sigma:
            return []
        return [name for name, w in self.group_weights().items() if w < 1.0 / self.max_group_weight]

    def group_weights(self) -> Dict[str, float]:
        """{group name: 1/sigma^2} for the current grouping."""
        return {name: 1.0 / (s * s) for name, s in self.sigmas().items()}

    def sigmas(self) -> Dict[str, float]:
        """{group name: sigma} for the current grouping."""
        s = torch.exp(self._bounded_log_sigma()).tolist()
        return {name: s[i] for i, name in enumerate(self.group_names)}

    def task_weights(self) -> Dict[str, float]:
        """{task: effective weight on its raw loss}: 1/(k sigma^2), the manual weight, or 1."""
        if self.method == "equal":
            return {t: 1.0 for t in self.tasks}
        if self.method == "manual":
            return dict(self.manual_weights)
        inv_var = torch.exp(-2.0 * self._bounded_log_sigma())[self.task_slot] / self.k
        return dict(zip(self.tasks, inv_var.tolist()))

    # ------------------------------------------------------------------ objective
    def check_losses(self, loss_dict: Dict[str, torch.Tensor]):
        """Every configured task is produced and every produced loss is a configured task."""
        missing = [t for t in self.tasks if t not in loss_dict]
        if missing:
            raise KeyError(
                f"MODEL.GALW.TASKS: the model produced no loss for task(s) {missing}; "
                f"it produces {sorted(loss_dict)}"
            )
        unheld = [t for t in loss_dict if t not in self.kinds]
        if unheld:
            raise KeyError(
                f"MODEL.GALW.TASKS: the model produces loss(es) {unheld} that no task/group holds; "
                "add them to MODEL.GALW.TASKS (and TASK_KINDS)"
            )

    def forward(self, loss_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted total loss (Eq. 5 / Eq. 9 for ULWF and RULWF)."""
        self.check_losses(loss_dict)
        if self.method == "equal":
            return sum(loss_dict[t] for t in self.tasks)
        if self.method == "manual":
            return sum(self.manual_weights[t] * loss_dict[t] for t in self.tasks)
        if self.log_sigma_min is not None:
            with torch.no_grad():  # projection, not a clamp in the graph: a bound sigma keeps its gradient
                self.log_sigma.clamp_(min=self.log_sigma_min)
        raw = torch.stack([loss_dict[t].float().reshape(()) for t in self.tasks])
        num_groups = len(self.groups)
        group_loss = torch.zeros(num_groups, device=raw.device, dtype=raw.dtype).index_add(
            0, self.task_slot, raw / self.k
        )
        log_sigma = self.log_sigma[:num_groups]
        if self.group_log_sigma == "per_task":
            log_terms = torch.zeros_like(group_loss).index_add(0, self.task_slot, torch.ones_like(raw))
        else:
            log_terms = torch.ones_like(group_loss)
        total = group_loss * torch.exp(-2.0 * log_sigma) + log_terms * log_sigma
        if self.method == "rulwf":
            total = total + self.lam * torch.abs(torch.exp(log_sigma) - 1.0)
        return total.sum()

    def extra_repr(self) -> str:
        return (f"method={self.method}, lambda={self.lam}, log_sigma={self.group_log_sigma}, "
                f"max_group_weight={self.max_group_weight:g}, groups={self.groups}")

