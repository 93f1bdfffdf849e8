"""GALW as a drop-in for a stock detectron2 model: GeneralizedRCNN's 4 losses as 4 tasks,
switched on by config keys alone through train_net.Trainer (single run and two phases)."""
import json
import os

import torch

import train_net
from conftest import stock_rcnn_cfg
from galw_core.hook import GALWHook
from galw_core.two_phase import INIT_WEIGHTS, PHASE_ONE_DIR, train_two_phase

RCNN_TASKS = ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"]
GALW_KEYS = [
    "MODEL.GALW.ENABLED", True,
    "MODEL.GALW.TASKS", RCNN_TASKS,
    "MODEL.GALW.TASK_KINDS", ["classification", "regression", "classification", "regression"],
    "MODEL.GALW.NUM_GROUPS", 2,
    "MODEL.GALW.EPOCH_ITERS", 1,
    "MODEL.GALW.PROBE_EPOCHS", 2,
    "MODEL.GALW.PROBE_PERIOD", 1,
    "INPUT.MIN_SIZE_TRAIN", (64,),
    "INPUT.MAX_SIZE_TRAIN", 96,
]


def _hook(trainer):
    return next(h for h in trainer._hooks if isinstance(h, GALWHook))


def test_stock_rcnn_single_run_switches_to_groups(box_dataset, tmp_path):
    cfg = stock_rcnn_cfg(box_dataset, tmp_path, *GALW_KEYS, "MODEL.GALW.MODE", "single_run")
    trainer = train_net.Trainer(cfg)
    trainer.train()  # 3 iterations: Gamma at 0 and 1 (epochs of 1 iteration), grouped at 2
    hook = _hook(trainer)
    assert hook.switch_iter == 2 and hook.phase == "grouped"
    saved = json.loads((tmp_path / "galw_groups.json").read_text())
    assert sorted(t for g in saved["groups"] for t in g) == sorted(RCNN_TASKS) and len(saved["groups"]) == 2
    assert all(len(v) == 2 and v[0] > 0 for v in saved["gamma_history"].values())
    w = trainer.model.galw_weighting
    assert w.method == "rulwf" and w.groups == saved["groups"]
    sig = w.sigmas()
    assert sig["g0"] != sig["g1"] and sig["g0"] != 1.0
    lines = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    grouped = [x for x in lines if "galw/sigma/g0" in x]
    assert grouped and grouped[-1]["iteration"] == 2
    assert {"galw/sigma/g1", "galw/group_weight/g1", "galw/raw/loss_cls", "galw/weight/loss_box_reg"} <= set(grouped[-1])
    assert any("galw/gamma/loss_rpn_cls" in x for x in lines)
    saved_model = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    assert "galw_weighting.log_sigma" in saved_model["model"]
    assert saved_model["trainer"]["hooks"]["GALWHook"]["groups"] == saved["groups"]


def test_stock_rcnn_two_phase(box_dataset, tmp_path):
    cfg = stock_rcnn_cfg(box_dataset, tmp_path, *GALW_KEYS, "SOLVER.MAX_ITER", 2)
    train_two_phase(cfg, train_net.Trainer)
    one = tmp_path / PHASE_ONE_DIR
    first = json.loads((one / "galw_groups.json").read_text())
    second = json.loads((tmp_path / "galw_groups.json").read_text())
    assert second["groups"] == first["groups"] and len(first["groups"]) == 2
    assert (one / INIT_WEIGHTS).is_file() and (one / "model_final.pth").is_file()
    init = torch.load(one / INIT_WEIGHTS, map_location="cpu")["model"]
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    assert final["trainer"]["hooks"]["GALWHook"]["phase"] == "grouped"
    assert any(not torch.equal(init[k], final["model"][k]) for k in init if k.startswith("backbone."))
    assert os.path.isfile(tmp_path / "metrics.json")
