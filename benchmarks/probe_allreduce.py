#!/usr/bin/env python
"""Cost of a rank-independent Gamma: each task's shared-parameter gradients are all-reduced
before the norms (Eq. 6 on the gradient of the whole batch), against all-reducing only the T
Gamma values (a mean of per-rank norms, which grows with the number of ranks; the scheme
before, rebuilt here for the comparison). Two gloo CPU processes on the toy model; prints ms per
probe of both, their ratio, and the extra cost per training step at the default PROBE_PERIOD,
all measured in this one run (interleaved, so load changes hit both alike).

    PYTHONPATH=projects/GALW:. python benchmarks/probe_allreduce.py [--channels 64] [--rounds 20]
"""
import argparse
import sys
import time

import galw  # noqa: F401  (before detectron2)
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from galw_core.probe import GradientProbe, select_shared_parameters
from galw_core.toy import ToyMultiTask, toy_batches
from result_file import save


class NormsReducedProbe(GradientProbe):
    """The previous scheme: per-rank Gamma, then its mean over ranks."""

    @torch.no_grad()
    def _gammas(self, grads, scale):
        grads = grads.div_(scale)
        norms = torch.stack([g.norm(dim=1) for g in grads.split(self.sizes, dim=1)], dim=1)
        gammas = norms.sum(dim=1) / len(self.params)
        dist.all_reduce(gammas)
        return gammas / dist.get_world_size()


def _worker(rank, port, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = ToyMultiTask(channels=args.channels)
    shared = select_shared_parameters(model, ["backbone."])
    probes = {"gradients reduced": GradientProbe(shared), "norms reduced": NormsReducedProbe(shared)}
    data = toy_batches(batch_size=4, size=64, seed=rank)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    times = {k: 0.0 for k in probes}
    step_time = 0.0
    for r in range(args.rounds + 1):
        for name, probe in probes.items():
            losses = model(next(data))
            dist.barrier()
            t0 = time.perf_counter()
            probe.measure(losses, model.task_names)
            dist.barrier()
            if r:  # round 0 warms up
                times[name] += time.perf_counter() - t0
        losses = model(next(data))
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        sum(losses.values()).backward()
        for p in model.parameters():  # what DDP does: gradients averaged
            dist.all_reduce(p.grad)
        opt.step()
        dist.barrier()
        if r:
            step_time += time.perf_counter() - t0
    if rank == 0:
        n = args.rounds
        new, old, step = times["gradients reduced"] / n, times["norms reduced"] / n, step_time / n
        period = 100
        params = sum(p.numel() for p in probes["norms reduced"].params)
        print(f"toy model, 2 gloo processes, {len(model.task_names)} tasks, {params} shared parameters, {n} rounds")
        print(f"  probe, gradients all-reduced: {new * 1e3:8.2f} ms")
        print(f"  probe, norms all-reduced:     {old * 1e3:8.2f} ms")
        print(f"  training step (backward + gradient all-reduce): {step * 1e3:8.2f} ms")
        print(f"probe time ratio gradients/norms reduced: {new / old:.3f}")
        print(f"extra cost per step at PROBE_PERIOD {period}: {(new - old) / period / step * 100:.2f}% of a step")
        save("probe_allreduce", {
            "settings": {"model": "toy", "processes": 2, "backend": "gloo", "tasks": len(model.task_names),
                         "shared parameters": params, "rounds": n},
            "rows": [{"what": "probe, gradients all-reduced", "ms": round(new * 1e3, 2)},
                     {"what": "probe, norms all-reduced", "ms": round(old * 1e3, 2)},
                     {"what": "training step (backward + gradient all-reduce)", "ms": round(step * 1e3, 2)}],
            "probe time ratio gradients/norms reduced": round(new / old, 3),
            f"extra cost per step at PROBE_PERIOD {period} (% of a step)": round((new - old) / period / step * 100, 2),
        }, argv=args.argv)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    args.argv = list(sys.argv)  # the command line, for rank 0's result file
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
