"""Weights in a ``.pkl`` (detectron2 / Caffe2 model zoo format) are files users receive: they load
through galw.checkpoint.load_array_pickle, which builds numpy arrays and containers only. A planted
pickle that would run code under ``pickle.load`` (detectron2's own reader, and ours before) is
refused naming the file, and runs nothing."""
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from galw.checkpoint import AtomicCheckpointer, load_array_pickle
from galw.modeling.backbone import read_imagenet_checkpoint


class _Planted:
    """Unpickling this creates ``path`` (the stand-in for arbitrary code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(tmp_path, payload_key="model"):
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump({payload_key: {"conv1_w": _Planted(str(marker))}}, f, protocol=2)
    return str(path), marker


def test_plain_pickle_would_run_the_planted_code(tmp_path):
    path, marker = _plant(tmp_path)
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()  # what the old readers did


def test_pretrained_pkl_with_code_is_refused_naming_file(tmp_path):
    path, marker = _plant(tmp_path, "blobs")
    with pytest.raises(pickle.UnpicklingError, match=rf"{path}: refusing to load '(io|builtins)\.open'"):
        read_imagenet_checkpoint(path)
    assert not marker.exists()


def test_model_weights_pkl_with_code_is_refused_by_the_checkpointer(tmp_path):
    path, marker = _plant(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match=rf"{path}: refusing"):
        AtomicCheckpointer(nn.Linear(2, 3)).load(path)
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["detectron2", "caffe2_blobs"])
def test_array_pkl_loads_as_detectron2_reads_it(tmp_path, layout):
    weight = np.arange(6, dtype=np.float32).reshape(3, 2)
    bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    path = str(tmp_path / "w.pkl")
    if layout == "detectron2":
        data = {"model": {"weight": weight, "bias": bias}, "__author__": "test"}
    else:
        data = {"blobs": {"weight": weight, "bias": bias, "bias_momentum": np.zeros(3, np.float32)}}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    loaded = load_array_pickle(path)
    assert set(loaded) == set(data)
    model = nn.Linear(2, 3)
    AtomicCheckpointer(model).load(path)
    assert torch.equal(model.weight.detach(), torch.from_numpy(weight))
    assert torch.equal(model.bias.detach(), torch.from_numpy(bias))
    assert os.path.exists(path)
