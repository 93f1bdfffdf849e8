"""Two CPU processes (DDP) train the toy model with GALW: Gamma is measured on the gradients
averaged over ranks, the groups are computed on rank 0 and broadcast, sigma gradients are
averaged, so both ranks end with identical groups, Gamma history, sigmas and weights although
their data differ. Run on plain gloo and under NCCL's rule (``nccl_like``: see dist_helpers),
where putting a CPU tensor on the default group fails as it does under detectron2's ``launch``.

Gamma does not depend on the number of processes: one process with a batch of B images gives
the same Gamma as two with B/2 each."""
import gc
import json
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import TESTS_DIR, free_port

#: Each test spawns two processes that import torch, detectron2 and galw: 10-20 s apiece.
pytestmark = pytest.mark.slow


def _worker(rank, port, out_dir, kind):
    sys.path.insert(0, TESTS_DIR)  # spawned: conftest and the helpers are not on its path
    import conftest  # noqa: F401  (this checkout's package first)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import detectron2.utils.comm as comm
    from dist_helpers import init_process_group
    from galw_core.solver import build_optimizer
    from galw_core.train_step import GALWSimpleTrainer, attach_weighting, get_weighting
    from galw_core.hook import GALWHook
    from galw_core.probe import GradientProbe, select_shared_parameters
    from galw_core.toy import ToyMultiTask, toy_batches
    from galw_helpers import toy_cfg

    torch.set_num_threads(1)
    init_process_group(kind, rank, 2, port)
    cfg = toy_cfg(out_dir)
    torch.manual_seed(0)
    model = attach_weighting(ToyMultiTask(epoch_iters=cfg.MODEL.GALW.EPOCH_ITERS), cfg)
    optimizer = build_optimizer(cfg, model)
    # DDP's own traffic is on the model's (CPU) tensors: under nccl_like it is given the group that
    # takes them, as under NCCL it uses the default group for CUDA tensors.
    ddp = DistributedDataParallel(model, process_group=comm._get_global_gloo_group())
    probe = GradientProbe(select_shared_parameters(ddp, cfg.MODEL.GALW.SHARED_PARAM_PREFIXES))
    step = GALWSimpleTrainer(ddp, toy_batches(batch_size=2, size=16, seed=100 + rank), optimizer, probe=probe)
    hook = GALWHook(cfg, step, cfg.MODEL.GALW.EPOCH_ITERS)
    step.register_hooks([hook])
    step.train(0, 23)
    w = get_weighting(ddp)
    state = {
        "groups": hook.groups,
        "phase": hook.phase,
        "gamma": hook.gamma_history,
        "log_sigma": w.log_sigma.detach().tolist(),
        "trunk": model.backbone["res3"][0].weight.detach().reshape(-1)[:20].tolist(),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(state, f)
    comm.synchronize()
    # Drop every holder of gloo work (DDP's reducer, the train step) while the interpreter is whole: a
    # gloo thread that releases a tensor during interpreter finalization aborts the process (SIGABRT,
    # "terminate called without an active exception"; pytorch/pytorch#179291 describes the mechanism).
    del step, hook, probe, ddp, model, optimizer, w
    gc.collect()
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["gloo", "nccl_like"])
def test_two_ranks_agree(tmp_path, kind):
    mp.spawn(_worker, args=(free_port(), str(tmp_path), kind), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["phase"] == r1["phase"] == "grouped"
    assert r0["groups"] == r1["groups"] and len(r0["groups"]) == 3
    assert r0["gamma"] == r1["gamma"]
    assert r0["log_sigma"] == r1["log_sigma"]
    assert any(abs(x) > 1e-6 for x in r0["log_sigma"][:3])  # the sigmas trained (3 groups, 3 steps)
    assert r0["trunk"] == r1["trunk"]
    assert json.loads((tmp_path / "galw_groups.json").read_text())["groups"] == r0["groups"]


BATCH = 4


def _gammas(images, batched):
    from galw_core.probe import GradientProbe, select_shared_parameters
    from galw_core.toy import ToyMultiTask

    model = ToyMultiTask()  # seeded: the same weights in every process
    probe = GradientProbe(select_shared_parameters(model, ["backbone."]), batched=batched)
    return probe.measure(model(images), model.task_names)


def _batch():
    from galw_core.toy import toy_batches

    return next(toy_batches(batch_size=BATCH, size=16, seed=7))


def _gamma_worker(rank, port, out_dir, kind):
    sys.path.insert(0, TESTS_DIR)
    import conftest  # noqa: F401
    import torch.distributed as dist

    from dist_helpers import init_process_group

    torch.set_num_threads(1)
    init_process_group(kind, rank, 2, port)
    try:
        half = _batch()[rank * BATCH // 2 : (rank + 1) * BATCH // 2]
        out = {str(batched): _gammas(half, batched) for batched in (False, True)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["gloo", "nccl_like"])
def test_gamma_independent_of_number_of_processes(tmp_path, kind):
    """Eq. 6 on the mean gradient over ranks: 1 x B images == 2 x B/2 images (a mean over ranks
    of per-rank norms would be larger: checked on the same halves)."""
    mp.spawn(_gamma_worker, args=(free_port(), str(tmp_path), kind), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    halves = [_gammas(_batch()[r * BATCH // 2 : (r + 1) * BATCH // 2], False) for r in range(2)]
    for batched in (False, True):
        one = _gammas(_batch(), batched)
        for r in range(2):
            two = ranks[r][str(batched)]
            assert two.keys() == one.keys()
            for t in one:
                assert two[t] == pytest.approx(one[t], rel=1e-5), (batched, t)
                mean_of_norms = (halves[0][t] + halves[1][t]) / 2
                assert mean_of_norms > one[t] * (1 + 1e-4)  # what averaging per-rank Gammas gave
