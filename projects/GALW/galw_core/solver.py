"""The optimizer of a GALW training: detectron2's SGD builder (solver/build.py) with the weighting's
``log_sigma`` free of weight decay, clipping of the joint gradient norm of the whole model, and on
CPU torch's fused SGD kernel (the per-tensor loop torch runs on CPU otherwise took about twice as
long on the demo's model: benchmarks/step_vs_ref.py measures the whole step)."""
import torch
from torch import nn

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["FULL_MODEL_CLIP", "MomentumReadySGD", "build_optimizer", "with_full_model_clipping"]


#: SOLVER.CLIP_GRADIENTS.CLIP_TYPE that clips the norm of ALL gradients together (torch's
#: clip_grad_norm_ over every parameter, as the references do); detectron2 v0.6's "norm" clips each
#: parameter tensor on its own, "value" each element.
FULL_MODEL_CLIP = "full_model"


class MomentumReadySGD(torch.optim.SGD):
    """torch's SGD that gives a parameter a zero momentum buffer before its first step.

    torch's fused kernel takes the buffers of all parameters with a gradient as one list and fails
    when some have one and others not yet (torch/optim/sgd.py ``_fused_sgd``: "is_first_step" only
    when none has one), as when a branch joins the loss after the first step. With dampening 0,
    ``momentum * 0 + grad`` is exactly the ``grad`` torch's first step stores, so every step is
    unchanged.

    It also tells AMP's grad scaler to unscale the gradients before ``step``, as for any optimizer
    without fused scaling: the clipping in a subclass's ``step`` reads them there (torch marks a fused
    SGD ``_step_supports_amp_scaling``, and the scaler then hands it the gradients still scaled).
    ``fused`` is this optimizer's, also after ``load_state_dict`` (torch would take the checkpoint's).
    """

    def __init__(self, params, *args, fused=None, **kwargs):
        super().__init__(params, *args, fused=fused, **kwargs)
        for group in self.param_groups:
            if group["momentum"] != 0 and group["dampening"] != 0:
                raise ValueError(f"{type(self).__name__}: a zero first buffer equals torch's first step only "
                                 f"with dampening 0, got {group['dampening']}")
        self._fused = bool(fused)
        self._step_supports_amp_scaling = False

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["fused"] = self._fused
            if self._fused:
                group["foreach"] = None

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["momentum"] == 0:
                continue
            for p in group["params"]:
                if p.grad is not None and self.state[p].get("momentum_buffer") is None:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        super().step()
        return loss


def with_full_model_clipping(optimizer_cls, max_norm: float, norm_type: float):
    """``optimizer_cls`` whose step first scales all gradients so that their joint norm is <= max_norm.

    The same construction as detectron2's own projects' ``build_optimizer`` (DETR), which v0.6's
    ``maybe_add_gradient_clipping`` does not offer.
    """

    class FullModelGradientClipping(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = f"{optimizer_cls.__name__}WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """detectron2's SGD builder, with the weighting's ``log_sigma`` free of weight decay.

    Decay would pull log sigma to 0 (sigma to 1) on top of RULWF's own regulariser.
    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` clips the global norm of all gradients
    (:func:`with_full_model_clipping`); "value" and "norm" are detectron2's per-tensor clipping.
    A model whose parameters are all on the CPU steps with torch's fused kernel, where torch's default
    is a loop over the tensors; elsewhere torch's default (on CUDA a few multi-tensor kernels already).
    """
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        overrides={"log_sigma": {"weight_decay": 0.0}},
    )
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL_CLIP:
        optimizer_cls = with_full_model_clipping(MomentumReadySGD, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_cls = maybe_add_gradient_clipping(cfg, MomentumReadySGD)
    return optimizer_cls(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        fused=all(p.device.type == "cpu" for group in params for p in group["params"]),
    )
