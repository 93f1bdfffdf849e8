"""Trainer pieces for GALW on any detectron2 model: the weighting on the model, the optimizer,
and train steps that host the probe (detectron2 v0.6 has no after-backward hook).

Used by ``train_net.Trainer`` with ``MODEL.GALW.ENABLED``; nothing here knows the model.
"""
import logging
import math
import time

import torch
from torch import nn

import detectron2.utils.comm as comm
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

from . import compat
from .config import AMP_PRECISIONS, GAMMA_LOSSES
from .distributed import all_reduce_mean_
from .finite import check_finite_step
from .hook import GALWHook
from .probe import GradientProbe, select_shared_parameters
from .validation import check_choice
from .weighting import LossWeighting

__all__ = [
    "attach_weighting",
    "get_weighting",
    "GALWSimpleTrainer",
    "GALWAMPTrainer",
    "galw_train_step",
    "amp_step_options",
    "check_amp_precision",
    "average_sigma_grad",
    "write_galw_metrics",
    "epoch_iters",
]

logger = logging.getLogger(__name__)

#: Attribute under which the weighting lives on the model (so it is in the model's checkpoint).
WEIGHTING_ATTR = "galw_weighting"


def attach_weighting(model: nn.Module, cfg) -> nn.Module:
    """Attach ``LossWeighting`` as ``model.galw_weighting`` when MODEL.GALW.ENABLED.

    As a submodule its sigmas are saved and loaded with the model. DistributedDataParallel
    is told to ignore it (its loss is computed outside the model's forward, and in some
    phases it takes no gradient); :func:`average_sigma_grad` averages its gradient instead.
    """
    if not cfg.MODEL.GALW.ENABLED:
        return model
    weighting = LossWeighting(cfg)
    device = next(model.parameters()).device
    model.add_module(WEIGHTING_ATTR, weighting.to(device))
    ignore = [f"{WEIGHTING_ATTR}.{n}" for n, _ in weighting.named_parameters()]
    ignore += [f"{WEIGHTING_ATTR}.{n}" for n, _ in weighting.named_buffers()]
    model._ddp_params_and_buffers_to_ignore = list(getattr(model, "_ddp_params_and_buffers_to_ignore", [])) + ignore
    return model


def get_weighting(model: nn.Module) -> LossWeighting:
    model = getattr(model, "module", model)
    weighting = getattr(model, WEIGHTING_ATTR, None)
    if weighting is None:
        raise AttributeError(
            "the model has no GALW weighting: build it through galw_core.train_step.attach_weighting "
            "(train_net.Trainer.build_model does with MODEL.GALW.ENABLED True)"
        )
    return weighting


@torch.no_grad()
def average_sigma_grad(weighting: LossWeighting):
    """Average log_sigma's gradient over ranks (DDP ignores it) so sigmas stay identical."""
    grad = weighting.log_sigma.grad
    if grad is not None:
        all_reduce_mean_(grad)  # a device tensor: the default group (NCCL)


def write_galw_metrics(weighting: LossWeighting, loss_dict):
    """EventStorage scalars: galw/raw/<task> (mean over ranks), galw/weight/<task> (the weight a task's
    loss gets), galw/sigma/<group> and galw/group_weight/<group> (1/sigma^2; its own namespace, as
    per-task weighting names its groups after the tasks)."""
    raw = {f"galw/raw/{t}": float(loss_dict[t].detach()) for t in weighting.tasks}
    gathered = comm.gather(raw)  # Python floats: detectron2's gloo group
    if not comm.is_main_process():
        return
    storage = get_event_storage()
    storage.put_scalars(**{k: sum(d[k] for d in gathered) / len(gathered) for k in raw})
    scalars = {f"galw/weight/{t}": w for t, w in weighting.task_weights().items()}
    if weighting.uses_sigma:
        scalars.update({f"galw/sigma/{name}": s for name, s in weighting.sigmas().items()})
        scalars.update({f"galw/group_weight/{name}": w for name, w in weighting.group_weights().items()})
        if weighting.log_sigma_min is not None:
            scalars["galw/groups_at_bound"] = _report_groups_at_bound(weighting)
            scalars["galw/groups_collapsed"] = _report_groups_collapsed(weighting)
    storage.put_scalars(**scalars, smoothing_hint=False)  # they jump at the switch: no median


def _report_groups_at_bound(weighting: LossWeighting) -> int:
    """How many groups MAX_GROUP_WEIGHT holds; a warning the first time each group reaches it (a
    group near the bound moves on and off it every few steps: the count is the time series)."""
    at_bound = weighting.groups_at_bound()
    new = [g for g in at_bound if g not in weighting.groups_warned_at_bound]
    if new:
        logger.warning("GALW: group(s) %s reached MODEL.GALW.MAX_GROUP_WEIGHT = %g: their 1/sigma^2 is held "
                       "there while at it (EventStorage galw/groups_at_bound counts the groups held)",
                       new, weighting.max_group_weight)
        weighting.groups_warned_at_bound.update(new)
    return len(at_bound)


def _report_groups_collapsed(weighting: LossWeighting) -> int:
    """How many groups weigh less than 1/MAX_GROUP_WEIGHT; a warning the first time each one does."""
    collapsed = weighting.groups_collapsed()
    new = [g for g in collapsed if g not in weighting.groups_warned_collapsed]
    if new:
        weights = weighting.group_weights()
        logger.warning("GALW: group(s) %s collapsed: weight 1/sigma^2 %s below 1/MAX_GROUP_WEIGHT = %g, so their "
                       "tasks barely train; their loss stays large (see galw/raw/*; EventStorage "
                       "galw/groups_collapsed counts such groups)", new,
                       ", ".join(f"{weights[g]:.3g}" for g in new), 1.0 / weighting.max_group_weight)
        weighting.groups_warned_collapsed.update(new)
    return len(collapsed)


def gamma_losses(weighting: LossWeighting, loss_dict, gamma_loss: str):
    """The per-task losses Gamma is measured on: each task's loss times the weight the current
    weighting gives it ("weighted": what the training backpropagates), or as returned ("raw")."""
    check_choice("GAMMA_LOSS", gamma_loss, GAMMA_LOSSES)
    if gamma_loss == "raw":
        return loss_dict
    weights = weighting.task_weights()
    return {t: loss_dict[t] * weights[t] for t in weighting.tasks}


class _GALWStep:
    """The shared part of the GALW train steps; ``weighting``, ``probe`` and ``gamma_loss`` are set on init."""

    def _galw_init(self, weighting: LossWeighting, probe: GradientProbe, gamma_loss: str = "weighted"):
        check_choice("GAMMA_LOSS", gamma_loss, GAMMA_LOSSES)  # at build time, not at the first probe
        self.weighting = weighting
        self.probe = probe
        self.gamma_loss = gamma_loss

    def _probe_if_due(self, loss_dict, scale=1.0):
        if self.probe is not None and self.probe.due:
            losses = gamma_losses(self.weighting, loss_dict, self.gamma_loss)
            self.probe.measure(losses, self.weighting.tasks, scale=scale)

    def _after_backward(self, loss_dict, data_time):
        average_sigma_grad(self.weighting)
        compat.run_after_backward_hooks(self)
        self._write_metrics(loss_dict, data_time)
        write_galw_metrics(self.weighting, loss_dict)


class GALWSimpleTrainer(_GALWStep, SimpleTrainer):
    """SimpleTrainer whose loss is the GALW weighting of the model's loss dict.

    Extra keyword arguments go to detectron2's SimpleTrainer (e.g. ``gather_metric_period`` on
    builds that have it); metrics are written synchronously (they involve collectives).
    """

    def __init__(self, model, data_loader, optimizer, weighting=None, probe=None, gamma_loss="weighted", **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self._galw_init(weighting if weighting is not None else get_weighting(model), probe, gamma_loss)

    def run_step(self):
        assert self.model.training, "[GALWSimpleTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = compat.next_batch(self)
        data_time = time.perf_counter() - start
        loss_dict = self.model(data)
        losses = self.weighting(loss_dict)
        check_finite_step(self.weighting, loss_dict, losses, self.iter)
        self._probe_if_due(loss_dict)  # before backward: the graph is still there
        self.optimizer.zero_grad()
        losses.backward()
        self._after_backward(loss_dict, data_time)
        self.optimizer.step()


class GALWAMPTrainer(_GALWStep, AMPTrainer):
    """AMPTrainer with the GALW weighting; the probe undoes the loss scale, and a probe of a step
    that GradScaler skips (inf/NaN gradients) is rejected, so the hook does not record it.

    Autocast runs on the model's device type (CUDA in real runs; the CPU in tests).
    """

    def __init__(self, model, data_loader, optimizer, grad_scaler=None, precision=torch.float16,
                 weighting=None, probe=None, gamma_loss="weighted", **kwargs):
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(_device_type(model))
        super().__init__(model, data_loader, optimizer, grad_scaler=grad_scaler, **kwargs)
        self.precision = precision
        self._galw_init(weighting if weighting is not None else get_weighting(model), probe, gamma_loss)

    def load_state_dict(self, state_dict):
        """A checkpoint without loss-scale state (trained without AMP, or in bfloat16, whose scaler is
        disabled) resumed with loss scaling (float16) continues from the scaler's initial scale, with a
        warning; torch's GradScaler raises on the empty state."""
        if not state_dict.get("grad_scaler") and self.grad_scaler.is_enabled():
            logger.warning("GALW AMP: the checkpoint holds no loss-scale state (trained without AMP, or in bfloat16 "
                           "without loss scaling); float16 training continues from the initial scale %g",
                           self.grad_scaler.get_scale())
            state_dict = dict(state_dict, grad_scaler=self.grad_scaler.state_dict())
        super().load_state_dict(state_dict)

    def run_step(self):
        assert self.model.training, "[GALWAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = compat.next_batch(self)
        data_time = time.perf_counter() - start
        with torch.autocast(_device_type(self.model), dtype=self.precision):
            loss_dict = self.model(data)
        losses = self.weighting(loss_dict)  # fp32: sigma terms outside autocast
        check_finite_step(self.weighting, loss_dict, losses, self.iter)
        probing = self.probe is not None and self.probe.due
        scale = float(self.grad_scaler.get_scale()) if probing else 1.0
        self._probe_if_due(loss_dict, scale=scale)
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._after_backward(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if probing and self.grad_scaler.get_scale() < scale:  # the scale backs off iff the step was skipped
            self.probe.reject(f"GradScaler skipped the step (inf/NaN gradients at loss scale {scale:g})")


def _device_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def check_amp_precision(cfg) -> str:
    """SOLVER.AMP.PRECISION, one of ``AMP_PRECISIONS`` (else ValueError naming the key)."""
    name = cfg.SOLVER.AMP.PRECISION
    if name not in AMP_PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION is {name!r}, expected one of {AMP_PRECISIONS}")
    return name


def amp_step_options(cfg, inner: AMPTrainer) -> dict:
    """``precision`` and ``grad_scaler`` of the GALW AMP step: SOLVER.AMP.PRECISION's dtype; for
    float16 the inner step's GradScaler when it is enabled (detectron2 builds a CUDA one, disabled
    where CUDA is absent: then torch's for the model's device), for bfloat16 a disabled one
    (float32's exponent range, nothing to unscale; ``get_scale()`` is 1 for the probe)."""
    name = check_amp_precision(cfg)
    device = _device_type(inner.model)
    if name == "bfloat16":
        return {"precision": torch.bfloat16, "grad_scaler": torch.amp.GradScaler(device, enabled=False)}
    scaler = inner.grad_scaler if inner.grad_scaler.is_enabled() else torch.amp.GradScaler(device)
    return {"precision": torch.float16, "grad_scaler": scaler}


def galw_train_step(inner: SimpleTrainer, cfg) -> SimpleTrainer:
    """The GALW counterpart of a DefaultTrainer's ``_trainer``, built by its constructor on the same
    model, optimizer, options (grad scaler, ...) and running data iterator (no second loader
    iterator is started)."""
    cls = GALWAMPTrainer if isinstance(inner, AMPTrainer) else GALWSimpleTrainer
    g = cfg.MODEL.GALW
    shared = select_shared_parameters(inner.model, g.SHARED_PARAM_PREFIXES)
    logger.info("GALW probe: %d shared parameter tensors (%s ... %s)", len(shared), shared[0][0], shared[-1][0])
    options = compat.train_step_options(inner)
    if cls is GALWAMPTrainer:
        options.update(amp_step_options(cfg, inner))
    return cls(
        inner.model,
        compat.SharedDataLoader(inner),
        inner.optimizer,
        weighting=get_weighting(inner.model),
        probe=GradientProbe(shared, batched=g.PROBE_BATCHED),
        gamma_loss=g.GAMMA_LOSS,
        **options,
    )


def epoch_iters(cfg) -> int:
    """MODEL.GALW.EPOCH_ITERS, or (0) the training set size / SOLVER.IMS_PER_BATCH."""
    if cfg.MODEL.GALW.EPOCH_ITERS > 0:
        return int(cfg.MODEL.GALW.EPOCH_ITERS)
    from detectron2.data import get_detection_dataset_dicts

    n = len(
        get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
    )
    iters = max(1, math.ceil(n / cfg.SOLVER.IMS_PER_BATCH))
    logger.info("GALW: one epoch = %d images / %d per batch = %d iterations", n, cfg.SOLVER.IMS_PER_BATCH, iters)
    return iters


def install_galw(trainer, hooks: list) -> list:
    """For a DefaultTrainer being built (call from its ``build_hooks``): swap its train step for
    the GALW one and put the GALW hook right after the first hook (the IterationTimer), so its
    state is current when the checkpointer saves. No-op when MODEL.GALW.ENABLED is False."""
    cfg = trainer.cfg
    if not cfg.MODEL.GALW.ENABLED:
        return hooks
    trainer._trainer = galw_train_step(trainer._trainer, cfg)
    hook = GALWHook(cfg, trainer, epoch_iters(cfg))
    return hooks[:1] + [hook] + hooks[1:]
