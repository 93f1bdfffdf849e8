"""Shared helpers of the GALW core tests: a GALW config and a GALW training of the toy model."""
import galw  # noqa: F401  (compat before detectron2)
import torch
from detectron2.config import get_cfg

from galw_core.solver import build_optimizer
from galw_core.train_step import GALWSimpleTrainer, attach_weighting
from galw_core.hook import GALWHook
from galw_core.probe import GradientProbe, select_shared_parameters
from galw_core.toy import ToyMultiTask, toy_batches

TOY_TASKS = [f"loss_t{i}" for i in range(6)]
#: The planted partition of ToyMultiTask's default trends (growing, flat, shrinking).
PLANTED = [["loss_t4", "loss_t5"], ["loss_t2", "loss_t3"], ["loss_t0", "loss_t1"]]


def toy_cfg(output_dir="", *opts):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.GALW.ENABLED", True,
            "MODEL.GALW.TASKS", TOY_TASKS,
            "MODEL.GALW.TASK_KINDS", ["classification"] * 3 + ["regression"] * 3,
            "MODEL.GALW.MODE", "single_run",
            "MODEL.GALW.NUM_GROUPS", 3,
            "MODEL.GALW.EPOCH_ITERS", 5,
            "MODEL.GALW.PROBE_EPOCHS", 4,
            "MODEL.GALW.PROBE_PERIOD", 1,
            "SOLVER.BASE_LR", 1e-4,
            "SOLVER.WEIGHT_DECAY", 1e-4,
            "OUTPUT_DIR", str(output_dir),
        ]
        + list(opts)
    )
    return cfg


def toy_training(cfg, data_seed=0, hooks_after=()):
    """(train step, GALW hook) for the toy model, the hook registered on the step."""
    torch.manual_seed(0)
    model = attach_weighting(ToyMultiTask(epoch_iters=cfg.MODEL.GALW.EPOCH_ITERS), cfg)
    optimizer = build_optimizer(cfg, model)
    probe = GradientProbe(
        select_shared_parameters(model, cfg.MODEL.GALW.SHARED_PARAM_PREFIXES), batched=cfg.MODEL.GALW.PROBE_BATCHED
    )
    step = GALWSimpleTrainer(model, toy_batches(batch_size=2, size=16, seed=data_seed), optimizer, probe=probe,
                             gamma_loss=cfg.MODEL.GALW.GAMMA_LOSS)
    hook = GALWHook(cfg, step, cfg.MODEL.GALW.EPOCH_ITERS)
    step.register_hooks([hook, *hooks_after])
    return step, hook
