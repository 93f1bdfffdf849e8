"""Loading a config or a checkpoint runs no code: every config the project reads goes through safe
YAML (``_BASE_`` chains included), every ``.pth`` through ``torch.load(weights_only=True)``.

Cases:
- test_config_with_python_tag_is_refused_naming_the_file: train_net.py (training and --eval-only),
  a ``_BASE_`` it inherits from, the export / search model builder, and a search index whose
  config_file names such a YAML: no code runs, the error names the file.
- test_plain_config_still_loads: safe loading keeps plain configs (and their _BASE_) as before.
- test_checkpoints_load_with_weights_only: detectron2's checkpointer passes weights_only=True.
- test_code_running_pth_is_refused_naming_the_file: a pickle that would run code is not run.
- test_torch_requirement_has_the_safe_lower_bound: setup.cfg asks for torch >= 2.8 (safe loading needs 2.6,
  galw.export register_fake(allow_override=True) 2.8).
"""
import configparser
import os
import re

import pytest
import torch

import train_net
from conftest import CONFIG_DIR, ROOT
from galw.checkpoint import AtomicCheckpointer, CheckpointError
from galw.config_file import load_config, merge_config_file
from galw.export import build_inference_model
from galw.search import load_search_model
from galw.search.index import INDEX_FORMAT
from tools_helpers import load_tool

STOCK = os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml")


def _evil_yaml(path, marker):
    path.write_text(f'_BASE_: "{STOCK}"\nSOLVER:\n  BASE_LR: !!python/object/apply:os.system ["touch {marker}"]\n')
    return path


def _weights(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": {}}, path)
    return str(path)


def _refused(call, evil, marker):
    with pytest.raises(ValueError, match=re.escape(str(evil)) + r".*python/object/apply:os.system"):
        call()
    assert not marker.exists(), "the config ran code"


def test_config_with_python_tag_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "MARKER"
    evil = _evil_yaml(tmp_path / "evil.yaml", marker)
    parser = train_net.default_argument_parser()
    _refused(lambda: train_net.main(parser.parse_args(["--config-file", str(evil)])), evil, marker)
    eval_args = ["--config-file", str(evil), "--eval-only", "MODEL.WEIGHTS", _weights(tmp_path)]
    _refused(lambda: train_net.main(parser.parse_args(eval_args)), evil, marker)

    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "evil.yaml"\nSOLVER:\n  MAX_ITER: 3\n')
    _refused(lambda: train_net.setup(parser.parse_args(["--config-file", str(child)])), evil, marker)
    _refused(lambda: load_config(str(child)), evil, marker)

    _refused(lambda: build_inference_model(str(evil), _weights(tmp_path)), evil, marker)
    _refused(lambda: load_search_model({"config_file": str(evil), "weights": _weights(tmp_path)}), evil, marker)

    index = tmp_path / "index.pt"
    torch.save({"format": INDEX_FORMAT, "config_file": str(evil), "weights": _weights(tmp_path), "opts": []}, index)
    query = ["query", "--index", str(index), "--query-image", str(tmp_path / "q.jpg"), "--box", "0", "0", "4", "4",
             "--out", str(tmp_path / "out")]
    _refused(lambda: load_tool("search").main(query), evil, marker)


def test_plain_config_still_loads(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{STOCK}"\nSOLVER:\n  MAX_ITER: 3\n')
    cfg = load_config(str(child), ["SOLVER.BASE_LR", "0.5"])
    assert cfg.SOLVER.MAX_ITER == 3 and cfg.SOLVER.BASE_LR == 0.5
    assert cfg.MODEL.RESNETS.DEPTH == 18  # from the _BASE_
    assert "GALW" in cfg.MODEL  # the project's keys
    again = load_config(str(child))
    merge_config_file(again, str(child))  # merging twice is allowed (detectron2's semantics)
    assert again.SOLVER.MAX_ITER == 3


def _checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)
    AtomicCheckpointer(model, str(tmp_path)).save("model_0000000")
    return model, str(tmp_path / "model_0000000.pth")


def test_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    model, path = _checkpoint(tmp_path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    AtomicCheckpointer(model).load(path)
    assert calls == [True]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_code_running_pth_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "model_final.pth"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=re.escape(str(evil)) + r": refusing to load .*could run code"):
        AtomicCheckpointer(torch.nn.Linear(2, 1)).load(str(evil))
    assert not marker.exists()


def test_torch_requirement_has_the_safe_lower_bound():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    requires = [r.strip() for r in setup["options"]["install_requires"].splitlines() if r.strip()]
    torch_req = [r for r in requires if re.match(r"torch\b(?!vision)", r)]
    assert torch_req == ["torch>=2.8"], requires
