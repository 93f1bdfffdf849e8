"""Collectives that keep NCCL's rule on any backend.

detectron2's ``launch`` makes an NCCL default process group, which reduces and gathers CUDA
tensors only; Python objects and CPU tensors must go through detectron2's gloo group
(``detectron2.utils.comm.gather`` / ``all_gather`` use it by default). The helpers here send a
tensor through the default group when that group has a backend for the tensor's device (CUDA
tensors under NCCL, anything under gloo) and otherwise through the gloo group on the CPU, so
the same code runs under ``launch`` on GPUs and in the CPU tests.
"""
from typing import List

import torch
import torch.distributed as dist

import detectron2.utils.comm as comm

__all__ = ["all_gather_rows", "all_reduce_mean_", "cpu_group", "default_group_takes"]


def default_group_takes(device: torch.device) -> bool:
    """True when the default process group has a backend for tensors on ``device``.

    ``get_backend_config`` is e.g. "cuda:nccl" for NCCL, "cpu:gloo,cuda:gloo" for gloo.
    """
    config = dist.get_backend_config()
    return torch.device(device).type in {part.split(":")[0] for part in config.split(",")}


def cpu_group():
    """detectron2's process group for Python objects and CPU tensors (gloo; all ranks)."""
    return comm._get_global_gloo_group()


def _route(tensor: torch.Tensor):
    """(tensor to send, its group): the tensor itself on the default group when it can take it,
    else a CPU copy on the gloo group."""
    if default_group_takes(tensor.device):
        return tensor, None
    return tensor.cpu(), cpu_group()


@torch.no_grad()
def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Replace ``tensor`` by its mean over ranks (in place; returns it). No-op on one process."""
    world = comm.get_world_size()
    if world == 1:
        return tensor
    sent, group = _route(tensor)
    dist.all_reduce(sent, group=group)
    if sent is not tensor:
        tensor.copy_(sent)
    return tensor.div_(world)


@torch.no_grad()
def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` [n_r, ...] along dim 0 in rank order; ranks may hold
    different numbers of rows (padded to the largest for the gather). Result on ``tensor``'s device."""
    world = comm.get_world_size()
    if world == 1:
        return tensor
    sent, group = _route(tensor)
    count = torch.tensor([sent.shape[0]], device=sent.device, dtype=torch.long)
    counts: List[torch.Tensor] = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c.item()) for c in counts]
    padded = sent.new_zeros((max(sizes),) + tuple(sent.shape[1:]))
    padded[: sent.shape[0]] = sent
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0).to(tensor.device)
