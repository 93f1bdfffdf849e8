"""OIMLoss: loss and memory updates on hand-computed values; 2-process memory sync (gloo, and
under NCCL's rule: see dist_helpers)."""
import math
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import TESTS_DIR, free_port
from galw.modeling.oim import OIMLoss

S2 = 1 / math.sqrt(2)


def _oim(temperature=1.0, queue_size=2, num_labeled=2):
    return OIMLoss(feat_dim=2, num_labeled=num_labeled, queue_size=queue_size, momentum=0.5, temperature=temperature)


def test_first_step_on_empty_memories():
    oim = _oim(temperature=30.0).train()
    loss = oim(torch.tensor([[3.0, 4.0]]), torch.tensor([0]))
    # all memories are zero: 4 equal logits -> log(4)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)
    # v0 = normalize(0.5 * 0 + 0.5 * [0.6, 0.8]) = [0.6, 0.8]
    assert torch.allclose(oim.lookup_table, torch.tensor([[0.6, 0.8], [0.0, 0.0]]), atol=1e-6)
    assert oim.queue_head.item() == 0
    assert torch.equal(oim.unlabeled_queue, torch.zeros(2, 2))


def test_loss_and_updates_hand_values():
    oim = _oim(temperature=2.0).train()
    oim.lookup_table.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    oim.unlabeled_queue.copy_(torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    features = torch.tensor([[5.0, 0.0], [0.0, -2.0], [1.0, 1.0]], requires_grad=True)
    loss = oim(features, torch.tensor([1, -1, -2]))
    # only the labeled box counts: x = [1, 0], logits 2 * [1, 0, 0.6, 0], target column 1
    expected = -0.0 + math.log(math.exp(2.0) + 1 + math.exp(1.2) + 1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # v1 = normalize(0.5 * [0, 1] + 0.5 * [1, 0]); the unlabeled [0, -1] goes to slot 0; -2 is ignored
    assert torch.allclose(oim.lookup_table, torch.tensor([[1.0, 0.0], [S2, S2]]), atol=1e-6)
    assert torch.allclose(oim.unlabeled_queue, torch.tensor([[0.0, -1.0], [0.0, 0.0]]), atol=1e-6)
    assert oim.queue_head.item() == 1
    # backward still works after the in-place memory update; gradient only reaches labeled rows
    loss.backward()
    assert features.grad[0].abs().sum() > 0
    assert torch.equal(features.grad[1:], torch.zeros(2, 2))


def test_same_identity_twice_updates_sequentially():
    oim = _oim().train()
    oim.lookup_table.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    oim(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    # first: bisector of 0 and 90 degrees (45); second: bisector of 45 and 90 (67.5 degrees)
    a = math.radians(67.5)
    assert torch.allclose(oim.lookup_table[0], torch.tensor([math.cos(a), math.sin(a)]), atol=1e-6)


def test_queue_wraps_around():
    oim = _oim(queue_size=2).train()
    oim(torch.tensor([[1.0, 0.0]]), torch.tensor([-1]))
    oim(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), torch.tensor([-1, -1]))
    # slots 0, then 1, then 0 again; head back at 1
    assert torch.allclose(oim.unlabeled_queue, torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    assert oim.queue_head.item() == 1


def test_no_labeled_boxes_gives_connected_zero():
    oim = _oim().train()
    features = torch.randn(3, 2, requires_grad=True)
    loss = oim(features, torch.tensor([-1, -2, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros(3, 2))


def test_eval_mode_does_not_update_and_buffers_are_checkpointed():
    oim = _oim().eval()
    oim(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, -1]))
    assert torch.equal(oim.lookup_table, torch.zeros(2, 2))
    assert torch.equal(oim.unlabeled_queue, torch.zeros(2, 2))
    assert set(oim.state_dict()) == {"lookup_table", "unlabeled_queue", "queue_head"}


def test_bad_pids_and_shapes_raise():
    oim = _oim(num_labeled=2)
    with pytest.raises(ValueError, match="num_pids"):
        oim(torch.ones(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        oim(torch.ones(1, 3), torch.tensor([0]))


# ---- distributed: 2 processes, gloo and NCCL's rule (dist_helpers) ---------------------------

def _rank_batch(rank):
    """Different row counts per rank, a shared identity (0) and unlabeled rows on both."""
    g = torch.Generator().manual_seed(100 + rank)
    if rank == 0:
        pids = torch.tensor([0, 2, -1, -2])
    else:
        pids = torch.tensor([0, -1, -1, 1, 3, -1])
    return torch.randn(len(pids), 4, generator=g), pids


def _make_dist_oim():
    torch.manual_seed(0)
    return OIMLoss(feat_dim=4, num_labeled=5, queue_size=4, momentum=0.5, temperature=30.0).train()


def _sync_worker(rank, world, port, out_dir, kind):
    import torch.distributed as dist

    sys.path.insert(0, TESTS_DIR)
    from dist_helpers import init_process_group

    init_process_group(kind, rank, world, port)
    try:
        oim = _make_dist_oim()
        for step in range(2):
            features, pids = _rank_batch(rank)
            features = features + step  # a second, different step
            loss = oim(features.requires_grad_(), pids)
            loss.backward()
        torch.save({k: v.clone() for k, v in oim.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pth"))
    finally:
        dist.destroy_process_group()



@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gloo", "nccl_like"])
def test_two_rank_memories_identical_and_equal_to_gathered_batch(tmp_path, kind):
    mp.spawn(_sync_worker, args=(2, free_port(), str(tmp_path), kind), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pth")
    r1 = torch.load(tmp_path / "rank1.pth")
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # the same as one process seeing rank 0's rows then rank 1's rows
    single = _make_dist_oim()
    for step in range(2):
        (f0, p0), (f1, p1) = _rank_batch(0), _rank_batch(1)
        single(torch.cat([f0, f1]) + step, torch.cat([p0, p1]))
    for key, value in single.state_dict().items():
        assert torch.allclose(r0[key], value, atol=1e-6), key
    # every labeled identity seen on either rank is in the table (2 only on rank 0; 1, 3 only on rank 1)
    assert (r0["lookup_table"].norm(dim=1)[[0, 1, 2, 3]] - 1).abs().max() < 1e-5
    assert r0["lookup_table"][4].abs().sum() == 0
    # 1 + 3 unlabeled rows per step, 2 steps -> 8 writes in a queue of 4
    assert r0["queue_head"].item() == 0


def test_unsized_table_takes_its_size_from_the_checkpoint_through_detectron2s_checkpointer(tmp_path):
    """num_labeled None (no train set): the table is outside the state dict until a checkpoint gives
    it rows, so fvcore's shape check keeps the checkpoint's [3, 2] table instead of dropping it."""
    from detectron2.checkpoint import DetectionCheckpointer

    trained = _oim(num_labeled=3)
    trained.lookup_table.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [S2, S2]]))
    trained.unlabeled_queue.copy_(torch.tensor([[0.6, 0.8], [0.8, 0.6]]))
    trained.queue_head.fill_(1)
    DetectionCheckpointer(torch.nn.Sequential(trained), save_dir=str(tmp_path)).save("oim")
    unsized = _oim(num_labeled=None)
    assert "lookup_table" not in unsized.state_dict() and unsized.lookup_table.shape == (0, 2)
    model = torch.nn.Sequential(unsized)
    result = DetectionCheckpointer(model).load(str(tmp_path / "oim.pth"))
    assert result == {}  # nothing else in the file
    assert unsized.num_labeled == 3
    assert torch.equal(unsized.lookup_table, trained.lookup_table)
    assert torch.equal(unsized.unlabeled_queue, trained.unlabeled_queue) and unsized.queue_head.item() == 1
    assert torch.equal(model.state_dict()["0.lookup_table"], trained.lookup_table)  # saved again from now on


def test_unsized_table_cannot_train_and_rejects_a_wrong_checkpoint():
    unsized = _oim(num_labeled=None).train()
    with pytest.raises(ValueError, match="MODEL.OIM.NUM_LABELED"):
        unsized(torch.ones(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"lookup_table: expected a \[num_labeled, 2\]"):
        unsized.load_state_dict({"lookup_table": torch.zeros(3, 5), "unlabeled_queue": torch.zeros(2, 2),
                                 "queue_head": torch.tensor(0)})
