"""train_net.py's Trainer trains a stock detectron2 model on CPU; checkpoints save, load and resume."""
import copy
import json
import os
import shutil

import torch

import train_net
from conftest import CONFIG_DIR, STOCK_RCNN_TEST_SIZE, stock_rcnn_cfg


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stock_rcnn_trains_three_iterations(box_dataset, tmp_path):
    cfg = stock_rcnn_cfg(box_dataset, tmp_path)
    trainer = train_net.Trainer(cfg)
    before = _state(trainer.model)
    trainer.train()
    assert trainer.iter == 3  # ran iterations 0, 1, 2
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("roi_heads.box_predictor" in k for k in changed)
    assert any(k.startswith("backbone.") for k in changed)
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert os.path.isfile(tmp_path / "metrics.json")


def test_checkpoint_resume_at_iteration_two(box_dataset, tmp_path):
    cfg = stock_rcnn_cfg(box_dataset, tmp_path, "SOLVER.MAX_ITER", 2, "SOLVER.CHECKPOINT_PERIOD", 2)
    first = train_net.Trainer(cfg)
    first.train()
    ckpt = tmp_path / "model_0000001.pth"  # written after iteration index 1, i.e. 2 iterations
    assert ckpt.is_file()
    saved = torch.load(ckpt, map_location="cpu")  # torch >= 2.6: weights_only=True by default
    assert saved["iteration"] == 1
    assert {"model", "trainer", "iteration"} <= set(saved)
    assert {"optimizer"} <= set(saved["trainer"]["_trainer"])
    assert {"LRScheduler"} <= set(saved["trainer"]["hooks"])

    cfg = stock_rcnn_cfg(box_dataset, tmp_path, "SOLVER.MAX_ITER", 3)
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    model_state = resumed.model.state_dict()
    for k, v in first.model.state_dict().items():
        assert torch.equal(model_state[k], v), k
    assert resumed.checkpointer.get_checkpoint_file().endswith("model_final.pth")
    opt_state = resumed.optimizer.state_dict()["state"]
    first_opt = first.optimizer.state_dict()["state"]
    assert opt_state.keys() == first_opt.keys()
    for k in first_opt:
        assert torch.equal(opt_state[k]["momentum_buffer"], first_opt[k]["momentum_buffer"])
    resumed.train()
    assert resumed.iter == 3


def test_eval_only_main_runs_with_weights(stock_rcnn_trained, tmp_path):
    args = train_net.default_argument_parser().parse_args(
        [
            "--config-file",
            os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml"),
            "--eval-only",
            "MODEL.WEIGHTS", str(stock_rcnn_trained["output_dir"] / "model_final.pth"),
            "DATASETS.TRAIN", f"('{stock_rcnn_trained['dataset']}',)",
            "OUTPUT_DIR", str(tmp_path / "eval"),
        ]
    )
    assert train_net.main(args) == {}


def test_checkpoint_write_is_atomic(stock_rcnn_trained, tmp_path, monkeypatch):
    out = tmp_path / "output"
    shutil.copytree(stock_rcnn_trained["output_dir"], out)
    checkpointer = copy.copy(stock_rcnn_trained["trainer"].checkpointer)  # the trainer's, writing to out
    checkpointer.save_dir = str(out)
    good = (out / "model_final.pth").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    try:
        checkpointer.save("model_final")
    except OSError:
        pass
    assert (out / "model_final.pth").read_bytes() == good
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not [p for p in os.listdir(out) if ".tmp." in p]


def test_galw_lines_reach_log_txt(box_dataset, tmp_path):
    """setup() gives the "galw" logger detectron2's handlers: OUTPUT_DIR/log.txt names the groups."""
    tasks = "['loss_rpn_cls', 'loss_rpn_loc', 'loss_cls', 'loss_box_reg']"
    args = train_net.default_argument_parser().parse_args(
        [
            "--config-file", os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml"),
            "DATASETS.TRAIN", f"('{box_dataset}',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path),
            "SOLVER.MAX_ITER", "3", *[str(v) for v in STOCK_RCNN_TEST_SIZE],
            "MODEL.GALW.ENABLED", "True", "MODEL.GALW.MODE", "single_run", "MODEL.GALW.TASKS", tasks,
            "MODEL.GALW.TASK_KINDS", "['classification', 'regression', 'classification', 'regression']",
            "MODEL.GALW.NUM_GROUPS", "2", "MODEL.GALW.EPOCH_ITERS", "1", "MODEL.GALW.PROBE_EPOCHS", "2",
            "MODEL.GALW.PROBE_PERIOD", "1",
        ]
    )
    train_net.main(args)
    groups = json.loads((tmp_path / "galw_groups.json").read_text())["groups"]
    log = (tmp_path / "log.txt").read_text()
    assert f"-> groups {groups}" in log
    assert "galw_core.hook INFO: GALW: from iteration 2, rulwf weighting over 2 groups" in log
