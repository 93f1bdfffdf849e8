"""Online Instance Matching (OIM) loss, correct under data-parallel training.

OIM (Xiao et al., CVPR 2017) classifies a box embedding against a lookup table
(LUT) holding one slowly updated feature per labeled identity, plus a circular
queue of recent unlabeled features that only enlarge the softmax denominator.
SeqNet and the ROI-AlignPS reference update these memories with the local batch
only (their gather is commented out: SeqNet models/oim.py:20, AlignPS
mmdet/models/roi_heads/bbox_heads/oim_nae_new.py:20), so under DDP every rank
drifts to its own table. Here, as in NAE4PS (lib/loss/oim.py:26-27 gathers with
lib/utils/distributed.py:133 tensor_gather), the features and identities of ALL
ranks are gathered first and every rank applies the same updates in the same
order, so the tables stay identical on every rank.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from galw_core.distributed import all_gather_rows

__all__ = ["OIMLoss", "UNLABELED", "IGNORED"]

#: Identity label of a person box without an identity: enters the queue, not the loss.
UNLABELED = -1
#: Identity label of a box that OIM must neither learn from nor remember (e.g. background).
IGNORED = -2


class OIMLoss(nn.Module):
    """OIM loss with a momentum-updated lookup table and a circular unlabeled queue.

    Args:
        feat_dim: embedding dimension D.
        num_labeled: number of labeled identities (labels are ``0..num_labeled-1``); None when
            no train set says it (inference from a config and weights alone): the lookup table then
            takes its size from the first state dict loaded, and training before that is an error.
        queue_size: length of the circular queue of unlabeled features.
        momentum: LUT update ``v <- momentum * v + (1 - momentum) * x``.
        temperature: scale of the cosine similarities before the softmax (30 in OIM/NAE).
        focal_gamma: 0 = cross-entropy; > 0 = focal OIM ``-(1 - p)^gamma log p`` of the true
            identity's probability p (the AlignPS reference: gamma 2, temperature 10).
        renormalize: renormalise an updated LUT row to unit norm (OIM, NAE) or keep the running
            average as it is (the AlignPS reference).
        queue_channels: 0 = the queue stores whole features; k > 0 = only their first k channels (the
            rest stay 0; k >= feat_dim keeps all), as the AlignPS reference's queue
            (unlabeled_matching_layer.py:32 stores ``[:64]``).
        queue_temperature: scale of the queue similarities; None = ``temperature`` (the AlignPS PRW
            reference scales the table by 15 and the queue by 10).
        normalizer: "labeled" divides the summed loss by the labeled boxes (OIM, NAE, ROI-AlignPS);
            "all" by every box given to forward, labeled or not (the AlignPS references'
            ``nll_loss(..., reduction='none')`` averaged by mmdet's ``_parse_losses``).

    The LUT, the queue and its write position are buffers, so they live in checkpoints.
    Memories are updated only in training mode, after the logits are computed (the
    loss of a step sees the memories of the previous step, as in the reference).
    """

    def __init__(
        self,
        feat_dim: int,
        num_labeled: Optional[int],
        queue_size: int,
        momentum: float = 0.5,
        temperature: float = 30.0,
        focal_gamma: float = 0.0,
        renormalize: bool = True,
        queue_temperature: Optional[float] = None,
        normalizer: str = "labeled",
        queue_channels: int = 0,
    ):
        super().__init__()
        if feat_dim <= 0 or (num_labeled is not None and num_labeled <= 0) or queue_size < 0:
            raise ValueError(
                f"OIMLoss expects feat_dim > 0, num_labeled > 0, queue_size >= 0; got "
                f"feat_dim={feat_dim}, num_labeled={num_labeled}, queue_size={queue_size}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"OIMLoss momentum must be in [0, 1); got {momentum}")
        if focal_gamma < 0:
            raise ValueError(f"OIMLoss focal_gamma must be >= 0; got {focal_gamma}")
        if normalizer not in ("labeled", "all"):
            raise ValueError(f"OIMLoss normalizer must be 'labeled' or 'all'; got {normalizer!r}")
        if queue_channels < 0:
            raise ValueError(f"OIMLoss queue_channels must be >= 0; got {queue_channels}")
        self.queue_channels = int(queue_channels)
        self.feat_dim = feat_dim
        self.num_labeled = num_labeled
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        self.focal_gamma = float(focal_gamma)
        self.renormalize = bool(renormalize)
        self.queue_temperature = temperature if queue_temperature is None else float(queue_temperature)
        self.normalizer = normalizer
        # Unsized: an empty table outside the state dict (so a checkpointer's shape check keeps the
        # checkpoint's entry) until _load_from_state_dict gives it the checkpoint's size.
        self.register_buffer("lookup_table", torch.zeros(num_labeled or 0, feat_dim), persistent=num_labeled is not None)
        self.register_buffer("unlabeled_queue", torch.zeros(queue_size, feat_dim))
        self.register_buffer("queue_head", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_labeled={self.num_labeled}, queue_size={self.queue_size}, "
            f"momentum={self.momentum}, temperature={self.temperature}, focal_gamma={self.focal_gamma}, "
            f"renormalize={self.renormalize}, queue_temperature={self.queue_temperature}, normalizer={self.normalizer}, "
            f"queue_channels={self.queue_channels}"
        )

    @property
    def awaiting_checkpoint_size(self) -> bool:
        """True until the lookup table has a size (built without it, no checkpoint loaded yet)."""
        return self.num_labeled is None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "lookup_table"
        if self.num_labeled is None and key in state_dict:
            table = state_dict[key]
            if table.dim() != 2 or table.shape[1] != self.feat_dim or table.shape[0] == 0:
                raise ValueError(
                    f"{key}: expected a [num_labeled, {self.feat_dim}] OIM lookup table, got {tuple(table.shape)}"
                )
            self.num_labeled = int(table.shape[0])
            self.lookup_table = self.lookup_table.new_zeros(tuple(table.shape))
            self._non_persistent_buffers_set.discard("lookup_table")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Loss of ``features`` [N, D] (normalised here) with identities ``pids`` [N].

        ``pids``: ``>= 0`` labeled, ``-1`` unlabeled (queued), ``-2`` ignored.
        Returns the (focal) cross-entropy summed over the labeled boxes and divided as ``normalizer``
        says (by default: the mean over the labeled boxes), ``0 * features.sum()``
        when there are none (so the graph stays connected for DDP).
        """
        if features.dim() != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(
                f"OIMLoss expects features of shape [N, {self.feat_dim}]; got {tuple(features.shape)}"
            )
        if self.num_labeled is None:
            raise ValueError(
                "OIMLoss has no lookup-table size: MODEL.OIM.NUM_LABELED is 0, no train set in DATASETS.TRAIN "
                "gave 'num_pids' and no checkpoint was loaded; set MODEL.OIM.NUM_LABELED or train on a dataset "
                "whose metadata has num_pids"
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
            # a copy of the memories (cat), which the updates below do not touch
            memory = torch.cat([self.lookup_table, self.unlabeled_queue], dim=0)
            table = memory.new_full((self.lookup_table.shape[0],), self.temperature)
            scale = torch.cat([table, memory.new_full((self.queue_size,), self.queue_temperature)])
            logits = features[labeled] @ memory.t() * scale
            log_p = F.log_softmax(logits, dim=1).gather(1, pids[labeled][:, None]).squeeze(1)
            per_box = -((1.0 - log_p.exp()) ** self.focal_gamma * log_p) if self.focal_gamma > 0 else -log_p
            loss = per_box.sum() / (features.shape[0] if self.normalizer == "all" else per_box.numel())
        else:
            loss = features.sum() * 0.0
        if self.training:
            self._update(all_gather_rows(features.detach()), all_gather_rows(pids))
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
        if 0 < self.queue_channels < self.feat_dim:
            unlabeled = unlabeled.clone()
            unlabeled[:, self.queue_channels :] = 0
        n = unlabeled.shape[0]
        slots = (self.queue_head + torch.arange(n, device=unlabeled.device)) % self.queue_size
        self.unlabeled_queue[slots] = unlabeled
        self.queue_head.copy_((self.queue_head + n) % self.queue_size)
