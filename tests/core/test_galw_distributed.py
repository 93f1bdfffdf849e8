"""Two gloo CPU processes (DDP) train the toy model with GALW: Gamma is all-reduced, the
groups are computed on rank 0 and broadcast, sigma gradients are averaged, so both ranks end
with identical groups, Gamma history, sigmas and weights although their data differ."""
import json
import os
import sys

import torch
import torch.multiprocessing as mp

from conftest import TESTS_DIR, free_port


def _worker(rank, port, out_dir):
    sys.path.insert(0, TESTS_DIR)  # spawned: conftest and the helpers are not on its path
    import conftest  # noqa: F401  (this checkout's package first)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import detectron2.utils.comm as comm
    from galw.core.train_step import GALWSimpleTrainer, attach_weighting, build_optimizer, get_weighting
    from galw.core.hook import GALWHook
    from galw.core.probe import GradientProbe, select_shared_parameters
    from galw.core.toy import ToyMultiTask, toy_batches
    from galw_helpers import toy_cfg

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cfg = toy_cfg(out_dir)
    torch.manual_seed(0)
    model = attach_weighting(ToyMultiTask(epoch_iters=cfg.MODEL.GALW.EPOCH_ITERS), cfg)
    optimizer = build_optimizer(cfg, model)
    ddp = DistributedDataParallel(model)
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
    dist.destroy_process_group()


def test_two_ranks_agree(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["phase"] == r1["phase"] == "grouped"
    assert r0["groups"] == r1["groups"] and len(r0["groups"]) == 3
    assert r0["gamma"] == r1["gamma"]
    assert r0["log_sigma"] == r1["log_sigma"]
    assert any(abs(x) > 1e-6 for x in r0["log_sigma"][:3])  # the sigmas trained (3 groups, 3 steps)
    assert r0["trunk"] == r1["trunk"]
    assert json.loads((tmp_path / "galw_groups.json").read_text())["groups"] == r0["groups"]
