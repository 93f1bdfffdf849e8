"""train_net.py's Trainer trains a stock detectron2 model on CPU; checkpoints save, load and resume."""
import copy
import json
import os
import shutil

import pytest
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


GALW_STOCK_OPTS = [
    "MODEL.GALW.ENABLED", True, "MODEL.GALW.TASKS", ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"],
    "MODEL.GALW.TASK_KINDS", ["classification", "regression", "classification", "regression"],
    "MODEL.GALW.WEIGHTING", "manual", "MODEL.GALW.GROUPING", "per_task", "MODEL.GALW.MANUAL_WEIGHTS", [1.0] * 4,
]


def test_cpu_amp_bfloat16_trains_in_the_galw_step(box_dataset, tmp_path):
    """SOLVER.AMP with PRECISION bfloat16 on a CPU model: the Trainer's step autocasts the convs to
    bfloat16 without loss scaling and the float32 weights train; its checkpoint resumes."""
    from galw_core.train_step import GALWAMPTrainer

    opts = ["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16", "SOLVER.CHECKPOINT_PERIOD", 2]
    cfg = stock_rcnn_cfg(box_dataset, tmp_path, "SOLVER.MAX_ITER", 2, *GALW_STOCK_OPTS, *opts)
    trainer = train_net.Trainer(cfg)
    step = trainer._trainer
    assert type(step) is GALWAMPTrainer and step.precision is torch.bfloat16 and not step.grad_scaler.is_enabled()
    dtypes = []
    trainer.model.backbone.stem.conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = _state(trainer.model)
    trainer.train()
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert all(v.dtype == torch.float32 for k, v in trainer.model.state_dict().items() if v.is_floating_point())
    after = trainer.model.state_dict()
    assert any(k.startswith("backbone.") and not torch.equal(before[k], after[k]) for k in before)
    resumed = train_net.Trainer(stock_rcnn_cfg(box_dataset, tmp_path, "SOLVER.MAX_ITER", 3, *GALW_STOCK_OPTS, *opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    assert resumed.iter == 3


def test_cpu_amp_resumes_across_precisions_and_keeps_the_loss_scale(box_dataset, tmp_path, caplog):
    """float16 on a CPU: the enabled scaler's state is checkpointed and restored; a bfloat16 checkpoint
    (no loss-scale state) resumed in float16 continues from the initial scale, with a warning."""
    fp16 = ["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16", "SOLVER.CHECKPOINT_PERIOD", 2]
    first = train_net.Trainer(stock_rcnn_cfg(box_dataset, tmp_path / "fp16", "SOLVER.MAX_ITER", 2, *GALW_STOCK_OPTS,
                                             *fp16))
    first._trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # float16 overflows: backs off
    first.train()
    scale = first._trainer.grad_scaler.get_scale()
    assert scale < 2.0**120
    resumed = train_net.Trainer(stock_rcnn_cfg(box_dataset, tmp_path / "fp16", "SOLVER.MAX_ITER", 3, *GALW_STOCK_OPTS,
                                               *fp16))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed._trainer.grad_scaler.get_scale() == scale

    bf16 = ["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16", "SOLVER.CHECKPOINT_PERIOD", 2]
    train_net.Trainer(stock_rcnn_cfg(box_dataset, tmp_path / "bf16", "SOLVER.MAX_ITER", 2, *GALW_STOCK_OPTS,
                                     *bf16)).train()
    resumed = train_net.Trainer(stock_rcnn_cfg(box_dataset, tmp_path / "bf16", "SOLVER.MAX_ITER", 3, *GALW_STOCK_OPTS,
                                               *fp16))
    with caplog.at_level("WARNING", logger="galw_core"):
        resumed.resume_or_load(resume=True)
    assert "holds no loss-scale state" in caplog.text
    assert resumed.start_iter == 2 and resumed._trainer.grad_scaler.get_scale() == 65536.0
    resumed.train()
    assert resumed.iter == 3


def test_amp_settings_are_checked_when_the_trainer_is_built(box_dataset, tmp_path):
    """A bad SOLVER.AMP.PRECISION even with AMP off; bfloat16 without GALW (detectron2's AMPTrainer
    autocasts float16 only) on any device; an evaluation of a CPU AMP config is not refused."""
    cfg = stock_rcnn_cfg(box_dataset, tmp_path / "a", "SOLVER.AMP.PRECISION", "float8")
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION is 'float8', expected one of \('float16', 'bfloat16'\)"):
        train_net.Trainer(cfg)
    cfg = stock_rcnn_cfg(box_dataset, tmp_path / "b", "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16",
                         "MODEL.DEVICE", "cuda")
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION 'bfloat16' needs MODEL.GALW.ENABLED"):
        train_net.Trainer(cfg)
    cfg = stock_rcnn_cfg(box_dataset, tmp_path / "c", "SOLVER.AMP.ENABLED", True)
    assert train_net.Trainer.build_model(cfg) is not None


def test_cpu_amp_without_galw_is_an_error_at_build(box_dataset, tmp_path):
    out = tmp_path / "out"
    cfg = stock_rcnn_cfg(box_dataset, out, "SOLVER.AMP.ENABLED", True)
    with pytest.raises(ValueError, match=r"SOLVER.AMP.ENABLED with MODEL.DEVICE 'cpu' needs MODEL.GALW.ENABLED"):
        train_net.Trainer(cfg)
    assert not out.exists()  # nothing was written
