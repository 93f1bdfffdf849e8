"""The checkpoint paths besides saving and resuming intact files: a pycls ``.pyth`` loads its
``model_state`` (batch counters dropped) or is refused naming the file; ``--resume`` past a
``last_checkpoint`` that names a missing file; a checkpointer without ``save_dir`` writes nothing;
an unreadable ``.sha256`` file and files that are not checkpoints at all (text, garbage bytes, a
bare pickle) are refused as unreadable, naming the file, not as code; the tensor scans and the
atomic write's clean-up."""
import logging
import os
import re
import subprocess

import pytest
import torch

from galw.checkpoint import (
    AtomicCheckpointer, CheckpointError, _held_open_by, exploded_tensors, load_checkpoint_file, non_finite_tensors,
    verify_checkpoint,
)
from galw_core.content_hash import torch_save_with_sha256
from galw_core.files import atomic_write


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_pycls_pyth_loads_its_model_state_without_batch_counters(tmp_path):
    source = _model(1)
    path = str(tmp_path / "regnet.pyth")
    torch.save({"model_state": source.state_dict(), "epoch": 7}, path)
    data = AtomicCheckpointer(_model())._load_file(path)
    assert data["__author__"] == "pycls" and data["matching_heuristics"] is True
    assert sorted(data["model"]) == ["0.bias", "0.weight", "1.bias", "1.running_mean", "1.running_var", "1.weight"]
    assert torch.equal(data["model"]["0.weight"], source[0].weight.detach())

    no_state = tmp_path / "other.pyth"
    torch.save({"model": source.state_dict()}, no_state)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{no_state}: a pycls .pyth checkpoint holds 'model_state'; this one does not")):
        AtomicCheckpointer(_model())._load_file(str(no_state))


def test_resume_past_a_last_checkpoint_naming_a_missing_file(tmp_path, caplog):
    model = _model()
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000000", iteration=0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ckpt.save("model_0000001", iteration=1)
    os.remove(tmp_path / "model_0000001.pth")  # e.g. removed by hand; last_checkpoint still names it
    resumed = _model(5)
    with caplog.at_level(logging.WARNING, logger="galw"):
        loaded = AtomicCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 0
    assert all(torch.equal(saved[k], v) for k, v in resumed.state_dict().items())
    assert f"{tmp_path / 'model_0000001.pth'}: named by last_checkpoint, but not found" in caplog.text
    assert "skipped the damaged model_0000001.pth" in caplog.text


def test_a_checkpointer_without_save_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert AtomicCheckpointer(_model(), "").save("model_final", iteration=3) is None
    assert os.listdir(tmp_path) == []


def test_an_unreadable_sha256_file_is_named(tmp_path):
    path = tmp_path / "model.pth"
    torch_save_with_sha256(str(path), {"model": _model().state_dict()})
    assert verify_checkpoint(str(path)) is True
    (tmp_path / "model.pth.sha256").write_text("not a hash\n")
    with pytest.raises(CheckpointError, match=re.escape(
            f"{path}: its SHA-256 file is unreadable: {path}.sha256: expected one line '<sha256 hex>  model.pth', "
            "got 'not a hash\\n'")):
        load_checkpoint_file(str(path))
    os.remove(tmp_path / "model.pth.sha256")
    assert verify_checkpoint(str(path)) is False  # nothing recorded: unverified, loaded as it is
    assert torch.equal(load_checkpoint_file(str(path))["model"]["0.bias"], _model().state_dict()["0.bias"])


@pytest.mark.parametrize("content", [
    b"MODEL:\n  WEIGHTS: x\n",  # a config passed as weights (the unpickler's memo lookup fails)
    b"\x80\x02.",  # a pickle with nothing on its stack
    b"\x00not a checkpoint\x00" * 20,  # garbage bytes (an opcode the unpickler does not know)
], ids=["text", "empty-pickle", "garbage"])
def test_files_that_are_no_checkpoint_are_refused_as_unreadable(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    unreadable = re.escape(f"{path}: not a readable checkpoint, the file is truncated or damaged (")
    with pytest.raises(CheckpointError, match=unreadable) as info:
        AtomicCheckpointer(_model()).load(str(path))
    assert "could run code" not in str(info.value)


def test_tensor_scans_name_the_nested_tensors():
    state = {"model": {"w": torch.tensor([1.0, float("nan")]), "steps": torch.tensor([3])},
             "optimizer": {"state": [torch.ones(2), (torch.tensor([float("inf")]), "lr")]}, "iteration": 5}
    assert non_finite_tensors(state) == ["model.w", "optimizer.state.1.0"]
    assert non_finite_tensors(torch.tensor([1, 2])) == []  # integers cannot be NaN
    weights = {"a": torch.tensor([2.0**41, -1.0]), "b": torch.tensor([-(2.0**42)]), "c": torch.zeros(0),
               "n": torch.tensor([10**13]), "ok": torch.tensor([1e11])}
    assert exploded_tensors(weights, "model") == [("model.a", 2.0**41), ("model.b", 2.0**42)]


def test_open_files_of_a_process(tmp_path):
    path = tmp_path / "model_0000001.pth.tmp.1"
    path.write_bytes(b"partial")
    with open(path, "rb"):
        assert _held_open_by(os.getpid(), str(path)) is True
    assert _held_open_by(os.getpid(), str(path)) is False
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert _held_open_by(dead.pid, str(path)) is None  # no /proc entry: cannot tell


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last_checkpoint"
    target.write_bytes(b"model_0000000.pth")

    def fail(f):
        f.write(b"model_00")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), fail)
    assert os.listdir(tmp_path) == ["last_checkpoint"] and target.read_bytes() == b"model_0000000.pth"
