"""``add_galw_core_config(cfg)``: the MODEL.GALW keys of the model-agnostic GALW core, and the values
each choice key accepts (:mod:`galw_core.validation` checks them, naming the key)."""
from detectron2.config import CfgNode as CN

__all__ = [
    "AMP_PRECISIONS",
    "GAMMA_LOSSES",
    "GROUPINGS",
    "GROUP_LOG_SIGMA",
    "LINKAGES",
    "MODES",
    "TASK_KIND_K",
    "WEIGHTING_METHODS",
    "add_galw_core_config",
]

#: MODEL.GALW.WEIGHTING and PROBE_WEIGHTING.
WEIGHTING_METHODS = ("equal", "manual", "ulwf", "rulwf")
#: MODEL.GALW.TASK_KINDS, with Eq. 5's k for each kind.
TASK_KIND_K = {"classification": 1.0, "regression": 2.0}
#: MODEL.GALW.GROUP_LOG_SIGMA: Eq. 9's log sigma term once per task of a group (literal) or once per group.
GROUP_LOG_SIGMA = ("per_task", "per_group")
#: MODEL.GALW.GROUPING.
GROUPINGS = ("galw", "per_task", "all", "branch", "explicit", "random")
#: MODEL.GALW.MODE.
MODES = ("two_phase", "single_run")
#: MODEL.GALW.LINKAGE: scipy linkages whose dendrogram is monotone (cut_tree is exact for them).
LINKAGES = ("ward", "single", "complete", "average", "weighted")
#: MODEL.GALW.GAMMA_LOSS.
GAMMA_LOSSES = ("weighted", "raw")
#: SOLVER.AMP.PRECISION: the autocast dtype of the GALW train step.
AMP_PRECISIONS = ("float16", "bfloat16")


def add_galw_core_config(cfg):
    """Add MODEL.GALW (loss weighting, gradient probing, task grouping) to any detectron2 config.

    Idempotent; enough to put GALW on a model that is not a person-search model.
    """
    if "GALW" in cfg.MODEL:
        return cfg
    cfg.MODEL.GALW = CN()
    # Weight the model's loss dict with GALW's machinery (train_net.Trainer); off = detectron2's sum.
    cfg.MODEL.GALW.ENABLED = False
    # Loss-dict keys to weight, in order. Every loss the model returns must be listed.
    cfg.MODEL.GALW.TASKS = []
    # One per task: "classification" (Eq. 5's k = 1) or "regression" (k = 2).
    cfg.MODEL.GALW.TASK_KINDS = []
    # Weighting after grouping: "equal", "manual", "ulwf" (Kendall et al.) or "rulwf" (Eq. 5).
    cfg.MODEL.GALW.WEIGHTING = "rulwf"
    # Weighting per task while Gamma is recorded (phase one); same choices as WEIGHTING. The paper's
    # phase one is its baseline training (ROI-AlignPS*: manual weights, Table 1 last row).
    cfg.MODEL.GALW.PROBE_WEIGHTING = "equal"
    # Loss whose gradient Gamma measures (Eq. 6): "weighted" (what phase one backpropagates: the
    # PROBE_WEIGHTING weight times the task's loss) or "raw" (the task's loss as the model returns it).
    cfg.MODEL.GALW.GAMMA_LOSS = "weighted"
    # lambda of RULWF's regulariser |sigma - 1| (paper: 1).
    cfg.MODEL.GALW.LAMBDA = 1.0
    # Eq. 9's log sigma term: "per_task" (literal: a group of n tasks adds n log sigma_g, each task's
    # Eq. 5 loss keeping its own) or "per_group" (one log sigma_g per group). docs/galw.md argues it.
    cfg.MODEL.GALW.GROUP_LOG_SIGMA = "per_task"
    # Upper bound on each group's weight 1/sigma^2 for ULWF/RULWF (sigma >= 1/sqrt of it); 0 = none
    # (the paper's equations). Without it a group whose loss goes to 0 gets weight ~ n/(2L): docs/galw.md.
    cfg.MODEL.GALW.MAX_GROUP_WEIGHT = 10.0
    # One weight per task for WEIGHTING "manual" (fixed per task, whatever the grouping).
    cfg.MODEL.GALW.MANUAL_WEIGHTS = []
    # "galw" (cluster Gamma trends), "per_task", "all", "branch", "explicit" or "random".
    cfg.MODEL.GALW.GROUPING = "galw"
    # G: number of groups for "galw" and "random" (paper's best: 4 of 10 tasks).
    cfg.MODEL.GALW.NUM_GROUPS = 4
    # scipy linkage for "galw": ward (default), single, complete, average or weighted.
    cfg.MODEL.GALW.LINKAGE = "ward"
    # Groups for "explicit": list of lists of task names.
    cfg.MODEL.GALW.GROUPS = []
    # Groups from a galw_groups.json (phase one's output): skips probing.
    cfg.MODEL.GALW.GROUPS_FILE = ""
    # Branches for "branch": list of lists of loss-name prefixes, e.g. [["loss_rpn_", "loss_nae_"], ["loss_aps_"]].
    cfg.MODEL.GALW.BRANCH_PREFIXES = []
    # Seed of the "random" grouping.
    cfg.MODEL.GALW.RANDOM_SEED = 0
    # Shared parameters probed by Eq. 6, by parameter-name prefix (paper: conv2..conv4 = res2..res4).
    cfg.MODEL.GALW.SHARED_PARAM_PREFIXES = ["backbone.res2", "backbone.res3", "backbone.res4"]
    # Measure Gamma every this many iterations (1 .. one epoch); see docs/galw.md for the cost.
    cfg.MODEL.GALW.PROBE_PERIOD = 100
    # All tasks' gradients in one vmapped backward (autograd.grad is_grads_batched) instead of one each.
    cfg.MODEL.GALW.PROBE_BATCHED = False
    # Epochs of Gamma before grouping; 0 = the whole (phase-one) training, as the paper.
    cfg.MODEL.GALW.PROBE_EPOCHS = 0
    # Iterations per epoch; 0 = training-set size / SOLVER.IMS_PER_BATCH.
    cfg.MODEL.GALW.EPOCH_ITERS = 0
    # "two_phase" (paper: a probing training, then a training from the same initial weights with
    # the groups; train_net.py runs both) or "single_run" (probe PROBE_EPOCHS, then switch in place).
    cfg.MODEL.GALW.MODE = "two_phase"
    # Autocast dtype of the GALW train step under SOLVER.AMP.ENABLED (detectron2's AMPTrainer
    # ``precision``): "float16" with loss scaling (GradScaler), or "bfloat16", which has float32's
    # exponent range and so trains without loss scaling; on a CPU with AMX or AVX512-BF16 it is the
    # faster one (docs/training.md, "AMP").
    cfg.SOLVER.AMP.PRECISION = "float16"
    return cfg
