"""Process groups for the multi-process CPU tests, one of them bound by NCCL's rule.

detectron2's ``launch`` makes an NCCL default group: it takes CUDA tensors only, and Python
objects / CPU tensors must go through detectron2's gloo group. Plain gloo tests cannot see a
breach of that rule, so ``"nccl_like"`` simulates it on the CPU:

* the default group is gloo registered for the "cuda" device type only (backend string
  ``"cuda:gloo"``), so torch refuses every CPU tensor on it with "No backend type associated
  with device type cpu", as NCCL does;
* the CPU stands in for the GPU: the model lives on the CPU, so code that routes tensors by what
  the default group can take (``galw_core.distributed``) sends them through the gloo group, while
  code that puts CPU tensors on the default group fails as it would under NCCL;
* detectron2 builds its gloo group (``comm._get_global_gloo_group``) only when
  ``dist.get_backend() == "nccl"``; the backend here is named "cuda:gloo", so the group is
  built the same way here (a real gloo ``new_group`` over all ranks, cached), as under NCCL;
* ``comm.synchronize`` (a barrier, which NCCL runs on the device) barriers on that gloo group.
"""
import functools

import torch.distributed as dist

import detectron2.utils.comm as comm

KINDS = ("gloo", "nccl_like")


def init_process_group(kind: str, rank: int, world: int, port: int):
    if kind not in KINDS:
        raise ValueError(f"process group kind {kind!r}, expected one of {KINDS}")
    backend = "gloo" if kind == "gloo" else "cuda:gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    if kind == "nccl_like":
        comm._get_global_gloo_group = functools.lru_cache()(lambda: dist.new_group(backend="gloo"))
        comm._get_global_gloo_group()  # every rank, in the same order (a collective)
        comm.synchronize = lambda: dist.barrier(group=comm._get_global_gloo_group())
