"""Every checkpoint carries its SHA-256; a damaged, empty or truncated one is refused naming the
file, ``--resume`` falls back to the newest intact one (logged), and a diverged training's
exploded weights are never saved.

Cases:
- test_every_checkpoint_has_its_sha256: the ``.sha256`` file beside each ``model_*.pth``
  (sha256sum format), replaced with the checkpoint.
- test_flipped_bytes_are_refused_naming_the_file: 4 KB of flipped bytes in a checkpoint.
- test_empty_and_truncated_files_are_refused_naming_the_file: with or without a recorded hash.
- test_eval_only_refuses_a_damaged_model_final: train_net.py --eval-only MODEL.WEIGHTS.
- test_resume_falls_back_to_the_newest_intact_checkpoint: logged; never to a damaged one.
- test_resume_with_every_checkpoint_damaged_fails_naming_them
- test_exploded_weights_are_not_saved: finite weights of 8e30 are refused naming the tensor.
"""
import hashlib
import logging
import os
import re

import pytest
import torch

import train_net
from conftest import CONFIG_DIR, stock_rcnn_cfg
from galw.checkpoint import AtomicCheckpointer, CheckpointError


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))


def _save_three(tmp_path):
    """model_0000000, model_0000001, model_0000002 (last), each of other weights; returns the states."""
    model = _model()
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    states = []
    for it in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        ckpt.save(f"model_{it:07d}", iteration=it)
        os.utime(tmp_path / f"model_{it:07d}.pth", (1000 + it, 1000 + it))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


def _flip(path, size=4096):
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    for i in range(start, min(start + size, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_checkpoint_has_its_sha256(tmp_path):
    _save_three(tmp_path)
    for it in range(3):
        pth = tmp_path / f"model_{it:07d}.pth"
        line = (tmp_path / f"model_{it:07d}.pth.sha256").read_text()
        assert line == f"{hashlib.sha256(pth.read_bytes()).hexdigest()}  {pth.name}\n"
    before = (tmp_path / "model_0000002.pth.sha256").read_text()
    model = _model(1)
    AtomicCheckpointer(model, str(tmp_path)).save("model_0000002")
    after = (tmp_path / "model_0000002.pth.sha256").read_text()
    assert after != before
    assert after.split()[0] == hashlib.sha256((tmp_path / "model_0000002.pth").read_bytes()).hexdigest()
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


def test_flipped_bytes_are_refused_naming_the_file(tmp_path):
    _save_three(tmp_path)
    damaged = tmp_path / "model_0000002.pth"
    _flip(damaged)
    model = _model(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=re.escape(f"{damaged}: the file is damaged: its SHA-256 ") +
                       r".*model_0000002.pth.sha256.*earlier checkpoint"):
        AtomicCheckpointer(model).load(str(damaged))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


def test_empty_and_truncated_files_are_refused_naming_the_file(tmp_path):
    _save_three(tmp_path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(f"{empty}: the file is empty (0 bytes)")):
        AtomicCheckpointer(_model()).load(str(empty))
    truncated = tmp_path / "truncated.pth"  # no recorded hash: torch's own error, with the file named
    truncated.write_bytes((tmp_path / "model_0000000.pth").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=re.escape(f"{truncated}: not a readable checkpoint, the file is "
                                                        "truncated or damaged")):
        AtomicCheckpointer(_model()).load(str(truncated))
    hashed = tmp_path / "model_0000001.pth"  # with a recorded hash: the hash tells
    hashed.write_bytes(hashed.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=re.escape(f"{hashed}: the file is damaged")):
        AtomicCheckpointer(_model()).load(str(hashed))


def test_eval_only_refuses_a_damaged_model_final(box_dataset, tmp_path):
    train_net.Trainer(stock_rcnn_cfg(box_dataset, tmp_path, "SOLVER.MAX_ITER", 1)).train()
    final = tmp_path / "model_final.pth"
    assert (tmp_path / "model_final.pth.sha256").is_file()
    _flip(final)
    args = train_net.default_argument_parser().parse_args([
        "--config-file", os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml"), "--eval-only",
        "MODEL.WEIGHTS", str(final), "DATASETS.TRAIN", f"('{box_dataset}',)", "OUTPUT_DIR", str(tmp_path / "eval"),
    ])
    with pytest.raises(CheckpointError, match=re.escape(f"{final}: the file is damaged")):
        train_net.main(args)


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    states = _save_three(tmp_path)
    _flip(tmp_path / "model_0000002.pth")
    model = _model(5)
    with caplog.at_level(logging.WARNING, logger="galw"):
        loaded = AtomicCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 1
    assert all(torch.equal(states[1][k], v) for k, v in model.state_dict().items())
    assert f"Resumed from {tmp_path / 'model_0000001.pth'}" in caplog.text
    assert "skipped the damaged model_0000002.pth" in caplog.text

    # A newer but damaged fallback is skipped too; an intact older one is taken.
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    loaded = AtomicCheckpointer(_model(5), str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 0


def test_resume_with_every_checkpoint_damaged_fails_naming_them(tmp_path):
    _save_three(tmp_path)
    for it in range(3):
        _flip(tmp_path / f"model_{it:07d}.pth")
    with pytest.raises(CheckpointError, match=(
            rf"--resume: no intact checkpoint in {re.escape(str(tmp_path))}: model_0000002.pth, model_0000001.pth, "
            r"model_0000000.pth cannot be loaded")):
        AtomicCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)


def test_exploded_weights_are_not_saved(tmp_path):
    model = _model()
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000000")
    with torch.no_grad():
        model[1].weight[0, 3] = 8e30
    with pytest.raises(FloatingPointError, match=(
            r"model_0000001.pth: the training diverged: 1 weight tensor\(s\) exceed \+-1e\+12: "
            r"model.1.weight \(max \|w\| 8e\+30\); last_checkpoint is unchanged")):
        ckpt.save("model_0000001")
    assert not (tmp_path / "model_0000001.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
