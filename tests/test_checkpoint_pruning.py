"""galw.checkpoint.remove_periodic_checkpoints: a finished training keeps model_final.pth and loses its
periodic checkpoints; an unfinished one, or one whose final checkpoint is unverified or damaged, keeps
everything."""
import os

import pytest
import torch

from galw.checkpoint import AtomicCheckpointer, CheckpointError, remove_periodic_checkpoints


def _train(directory, finish=True):
    """Checkpoints as detectron2's PeriodicCheckpointer names them: model_0000001, model_0000003 and,
    when ``finish``, model_final (last_checkpoint names the last one saved)."""
    model = torch.nn.Linear(16, 4)
    ckpt = AtomicCheckpointer(model, str(directory))
    for name in ["model_0000001", "model_0000003"] + (["model_final"] if finish else []):
        ckpt.save(name)
    return sorted(os.listdir(directory))


def test_a_finished_training_keeps_only_its_final_checkpoint(tmp_path):
    _train(tmp_path)
    (tmp_path / "metrics.json").write_text("{}\n")
    periodic = [tmp_path / f"model_000000{i}.pth" for i in (1, 3)]
    size = sum(p.stat().st_size + (tmp_path / (p.name + ".sha256")).stat().st_size for p in periodic)
    assert remove_periodic_checkpoints(str(tmp_path)) == size > 0
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "metrics.json", "model_final.pth",
                                            "model_final.pth.sha256"]
    assert remove_periodic_checkpoints(str(tmp_path)) == 0


def test_an_unfinished_training_keeps_every_checkpoint(tmp_path):
    before = _train(tmp_path, finish=False)
    with pytest.raises(ValueError, match=r"expected a finished training \(last_checkpoint naming model_final.pth\), "
                                         r"found 'model_0000003.pth'; its checkpoints are kept"):
        remove_periodic_checkpoints(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == before


def test_a_final_checkpoint_without_its_hash_or_damaged_keeps_every_checkpoint(tmp_path):
    before = _train(tmp_path)
    final = tmp_path / "model_final.pth"
    hash_file = tmp_path / "model_final.pth.sha256"
    recorded = hash_file.read_text()
    hash_file.unlink()
    with pytest.raises(ValueError, match=r"model_final.pth: expected an intact final checkpoint with its recorded "
                                         r"SHA-256 .*; its periodic checkpoints are kept"):
        remove_periodic_checkpoints(str(tmp_path))
    hash_file.write_text(recorded)
    data = bytearray(final.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    final.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model_final.pth: the file is damaged"):
        remove_periodic_checkpoints(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == before
