"""galw_core.distributed: tensors go through the default group when it takes their device, else
through detectron2's gloo group (NCCL's rule); 2 processes, gloo and NCCL-like (dist_helpers)."""
import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TESTS_DIR, free_port
from galw_core import distributed


@pytest.mark.parametrize(
    "config, device, expected",
    [("cuda:nccl", "cuda", True), ("cuda:nccl", "cpu", False), ("cpu:gloo,cuda:gloo", "cpu", True),
     ("cuda:gloo", "cpu", False), ("cpu:gloo,cuda:nccl", "cpu", True)],
)
def test_default_group_takes(monkeypatch, config, device, expected):
    monkeypatch.setattr(dist, "get_backend_config", lambda group=None: config)
    assert distributed.default_group_takes(torch.device(device)) is expected


def _worker(rank, port, out_dir, kind):
    sys.path.insert(0, TESTS_DIR)
    from dist_helpers import init_process_group

    from galw.modeling.alignps.branch import _mean_over_ranks

    init_process_group(kind, rank, 2, port)
    try:
        mean = distributed.all_reduce_mean_(torch.tensor([1.0, 2.0]) * (rank + 1))
        rows = distributed.all_gather_rows(torch.arange(2 + rank * 2).reshape(-1, 1) + 10 * rank)
        count = _mean_over_ranks(3.0 + 4 * rank, torch.device("cpu"))
        out = {"mean": mean.tolist(), "rows": rows.reshape(-1).tolist(), "count": count}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch, detectron2 and galw
@pytest.mark.parametrize("kind", ["gloo", "nccl_like"])
def test_collectives_two_processes(tmp_path, kind):
    mp.spawn(_worker, args=(free_port(), str(tmp_path), kind), nprocs=2, join=True)
    for rank in range(2):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["mean"] == [1.5, 3.0]
        assert out["rows"] == [0, 1, 10, 11, 12, 13]  # 2 rows from rank 0, 4 from rank 1, in rank order
        assert out["count"] == 5.0


def test_single_process_is_identity():
    t = torch.tensor([3.0])
    assert distributed.all_reduce_mean_(t) is t and t.item() == 3.0
    rows = torch.ones(2, 3)
    assert distributed.all_gather_rows(rows) is rows
