"""1 process and 2 gloo processes give identical person-search numbers."""
import json

import torch.distributed as dist
import torch.multiprocessing as mp

import galw  # noqa: F401
from galw.evaluation import PersonSearchEvaluator

import eval_helpers as H

from conftest import free_port


def _evaluate(ios, gallery, queries, protocols, rank, world):
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ev = PersonSearchEvaluator(name, cuhk_protocols=("TestG100",))
    ev.reset()
    for inp, out in ios[rank::world]:
        ev.process([inp], [out])
    return ev.evaluate()


def _worker(rank, port, path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        gallery, queries, protocols, ios = H.random_cuhk_scene(seed=3)
        results = _evaluate(ios, gallery, queries, protocols, rank, 2)
        if rank == 0:
            with open(path, "w") as f:
                json.dump(results, f)
        else:
            assert results == {}
        dist.barrier()  # both ranks past their last collective before the groups are torn down
    finally:
        dist.destroy_process_group()



def test_one_and_two_processes_agree(tmp_path):
    gallery, queries, protocols, ios = H.random_cuhk_scene(seed=3)
    single = _evaluate(ios, gallery, queries, protocols, 0, 1)
    path = tmp_path / "two.json"
    mp.spawn(_worker, args=(free_port(), str(path)), nprocs=2)
    two = json.load(open(path))
    assert json.loads(json.dumps(single)) == two
    assert 0 < single["search"]["mAP"] < 100 and 0 < single["detection"]["recall"] < 100
