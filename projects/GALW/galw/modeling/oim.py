"""Online Instance Matching (OIM) loss, correct under data-parallel training.

OIM (Xiao et al., CVPR 2017) classifies a box embedding against a lookup table
(LUT) holding one slowly updated feature per labeled identity, plus a circular
queue of recent unlabeled features that only enlarge the softmax denominator.
The public person-search codebases update these memories with the local batch
only, so under DDP every rank drifts to its own table. Here the features and
identities of ALL ranks are gathered first and every rank applies the same
updates in the same order, so the tables stay identical on every rank.
"""
from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["OIMLoss", "UNLABELED", "IGNORED"]

#: Identity label of a person box without an identity: enters the queue, not the loss.
UNLABELED = -1
#: Identity label of a box that OIM must neither learn from nor remember (e.g. background).
IGNORED = -2


class OIMLoss(nn.Module):
    """OIM loss with a momentum-updated lookup table and a circular unlabeled queue.

    Args:
        feat_dim: embedding dimension D.
        num_labeled: number of labeled identities (labels are ``0..num_labeled-1``).
        queue_size: length of the circular queue of unlabeled features.
        momentum: LUT update ``v <- momentum * v + (1 - momentum) * x``.
        temperature: scale of the cosine similarities before the softmax (30 in OIM/NAE).
        focal_gamma: 0 = cross-entropy; > 0 = focal OIM ``-(1 - p)^gamma log p`` of the true
            identity's probability p (the AlignPS reference: gamma 2, temperature 10).
        renormalize: renormalise an updated LUT row to unit norm (OIM, NAE) or keep the running
            average as it is (the AlignPS reference).

    The LUT, the queue and its write position are buffers, so they live in checkpoints.
    Memories are updated only in training mode, after the logits are computed (the
    loss of a step sees the memories of the previous step, as in the reference).
    """

    def __init__(
        self,
        feat_dim: int,
        num_labeled: int,
        queue_size: int,
        momentum: float = 0.5,
        temperature: float = 30.0,
        focal_gamma: float = 0.0,
        renormalize: bool = True,
    ):
        super().__init__()
        if feat_dim <= 0 or num_labeled <= 0 or queue_size < 0:
            raise ValueError(
                f"OIMLoss expects feat_dim > 0, num_labeled > 0, queue_size >= 0; got "
                f"feat_dim={feat_dim}, num_labeled={num_labeled}, queue_size={queue_size}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"OIMLoss momentum must be in [0, 1); got {momentum}")
        if focal_gamma < 0:
            raise ValueError(f"OIMLoss focal_gamma must be >= 0; got {focal_gamma}")
        self.feat_dim = feat_dim
        self.num_labeled = num_labeled
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.focal_gamma = float(focal_gamma)
        self.renormalize = bool(renormalize)
        self.register_buffer("lookup_table", torch.zeros(num_labeled, feat_dim))
        self.register_buffer("unlabeled_queue", torch.zeros(queue_size, feat_dim))
        self.register_buffer("queue_head", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_labeled={self.num_labeled}, queue_size={self.queue_size}, "
            f"momentum={self.momentum}, temperature={self.temperature}, focal_gamma={self.focal_gamma}, "
            f"renormalize={self.renormalize}"
        )

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Loss of ``features`` [N, D] (normalised here) with identities ``pids`` [N].

        ``pids``: ``>= 0`` labeled, ``-1`` unlabeled (queued), ``-2`` ignored.
        Returns the mean cross-entropy over the labeled boxes, ``0 * features.sum()``
        when there are none (so the graph stays connected for DDP).
        """
        if features.dim() != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(
                f"OIMLoss expects features of shape [N, {self.feat_dim}]; got {tuple(features.shape)}"
            )
        pids = pids.to(device=features.device, dtype=torch.long).reshape(-1)
        if pids.numel() != features.shape[0]:
            raise ValueError(f"OIMLoss: {features.shape[0]} features but {pids.numel()} pids")
        bad = (pids >= self.num_labeled) | (pids < IGNORED)
        if bad.any():
            raise ValueError(
                f"OIMLoss: pids must be in [0, {self.num_labeled}) or -1 (unlabeled) / -2 (ignored); "
                f"got {sorted(set(pids[bad].tolist()))} (is MODEL.OIM.NUM_LABELED the train set's num_pids?)"
            )
        features = F.normalize(features.float(), dim=1)
        labeled = pids >= 0
        if labeled.any():
            memory = torch.cat([self.lookup_table, self.unlabeled_queue], dim=0)
            logits = features[labeled] @ memory.t() * self.temperature
            if self.focal_gamma > 0:
                log_p = F.log_softmax(logits, dim=1).gather(1, pids[labeled][:, None]).squeeze(1)
                loss = -((1.0 - log_p.exp()) ** self.focal_gamma * log_p).mean()
            else:
                loss = F.cross_entropy(logits, pids[labeled])
        else:
            loss = features.sum() * 0.0
        if self.training:
            self._update(*_all_gather_rows(features.detach(), pids))
        return loss

    @torch.no_grad()
    def _update(self, features: torch.Tensor, pids: torch.Tensor) -> None:
        """Apply the memory updates of the (gathered) batch in its order."""
        for x, y in zip(features[pids >= 0], pids[pids >= 0].tolist()):
            v = self.momentum * self.lookup_table[y] + (1.0 - self.momentum) * x
            self.lookup_table[y] = F.normalize(v, dim=0) if self.renormalize else v
        unlabeled = features[pids == UNLABELED]
        if self.queue_size == 0 or unlabeled.numel() == 0:
            return
        unlabeled = unlabeled[-self.queue_size :]
        n = unlabeled.shape[0]
        slots = (self.queue_head + torch.arange(n, device=unlabeled.device)) % self.queue_size
        self.unlabeled_queue[slots] = unlabeled
        self.queue_head.copy_((self.queue_head + n) % self.queue_size)


def _all_gather_rows(features: torch.Tensor, pids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``features`` [n_r, D] and ``pids`` [n_r] of every rank, in rank order.

    Works on the tensors' own device (gloo on CPU, NCCL on GPU); ranks may hold
    different numbers of rows, so rows are padded to the largest count for the gather.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, pids
    world = dist.get_world_size()
    count = torch.tensor([features.shape[0]], device=features.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    largest = max(counts)
    return _gather_padded(features, counts, largest), _gather_padded(pids, counts, largest)


def _gather_padded(tensor: torch.Tensor, counts, largest: int) -> torch.Tensor:
    padded = tensor.new_zeros((largest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)], dim=0)
