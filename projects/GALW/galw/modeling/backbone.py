"""The shared ResNet trunk, the per-branch res5 stages, and ImageNet initialisation.

In the GALW model family (paper Fig. 2) the stem and res2..res4 are SHARED by all
branches, while every branch owns its own res5 (NAE: the ROI head on res4; AlignPS:
a res5 feeding its FPN). The trunk is detectron2's ResNet cut after the last of
``MODEL.RESNETS.OUT_FEATURES``; :func:`build_res5_stage` builds a branch's res5 with
the same block type, widths and norm as detectron2 would have built it.

ImageNet weights (``MODEL.PERSON_SEARCH.PRETRAINED``) are loaded once at model
construction into the trunk (``stem``, ``res2``..``res4``) and into EVERY submodule
named ``res5`` (each branch's copy starts from the ImageNet res5). Accepted files:

* detectron2 naming (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ...), as a
  ``.pth``/``.pt`` (a state dict, or ``{"model": state dict}``) or a ``.pkl``
  (``{"model": {name: ndarray}}``, e.g. the output of detectron2's
  ``tools/convert-torchvision-to-d2.py``); keys may carry a prefix such as ``backbone.``;
* Caffe2 Detectron naming (``conv1_w``, ``res2_0_branch2a_w``, ...), i.e. detectron2's
  model-zoo ``ImageNetPretrained/MSRA/R-50.pkl`` (``{"blobs": ...}``), renamed with
  detectron2's own converter. Needs ``STRIDE_IN_1X1: True`` and BGR input, 0..255
  mean subtraction with std 1 (detectron2's defaults; the paper's reference uses
  these "caffe" weights);
* torchvision naming (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.*``), a
  ``.pth`` state dict such as ``resnet50-0676ba61.pth``. Needs ``STRIDE_IN_1X1: False``
  and ``INPUT.FORMAT: "RGB"`` with ``PIXEL_MEAN [123.675, 116.28, 103.53]``,
  ``PIXEL_STD [58.395, 57.12, 57.375]``.

Every trunk/res5 tensor of the model must be found with the right shape (else a
ValueError names it); checkpoint tensors nothing uses (``fc``) are counted in the log.
"""
import logging
import os
import re
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet, build_resnet_backbone

from ..checkpoint import load_array_pickle

__all__ = [
    "build_person_search_backbone",
    "build_res5_stage",
    "res5_out_channels",
    "load_imagenet_weights",
    "read_imagenet_checkpoint",
]

logger = logging.getLogger(__name__)

_RESNET_STAGES = ("stem", "res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
def build_person_search_backbone(cfg, input_shape: ShapeSpec):
    """detectron2's ResNet trunk ending at the shared stages (never res5, which branches own)."""
    if "res5" in cfg.MODEL.RESNETS.OUT_FEATURES:
        raise ValueError(
            "MODEL.RESNETS.OUT_FEATURES lists 'res5', but in the person-search model res5 belongs "
            "to each branch (see MODEL.PERSON_SEARCH.BRANCHES); list only shared stages, e.g. "
            f"['res3', 'res4']; got {list(cfg.MODEL.RESNETS.OUT_FEATURES)}"
        )
    return build_resnet_backbone(cfg, input_shape)


def _res5_kwargs(cfg) -> Dict:
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    blocks = {18: 2, 34: 3, 50: 3, 101: 3, 152: 3}
    if depth not in blocks:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(blocks)}; got {depth}")
    if depth in (18, 34):
        return {
            "block_class": BasicBlock,
            "num_blocks": blocks[depth],
            "in_channels": r.RES2_OUT_CHANNELS * 4,
            "out_channels": r.RES2_OUT_CHANNELS * 8,
        }
    return {
        "block_class": BottleneckBlock,
        "num_blocks": blocks[depth],
        "in_channels": r.RES2_OUT_CHANNELS * 4,
        "out_channels": r.RES2_OUT_CHANNELS * 8,
        "bottleneck_channels": r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8,
        "stride_in_1x1": r.STRIDE_IN_1X1,
        "num_groups": r.NUM_GROUPS,
    }


def res5_out_channels(cfg) -> int:
    """Channels of a branch's res5 output (2048 for R-50, 512 for R-18)."""
    return _res5_kwargs(cfg)["out_channels"]


def build_res5_stage(cfg, first_stride: int = 2) -> nn.Sequential:
    """A fresh res5 stage as detectron2's ResNet of ``cfg`` would build it (res4 in, res5 out).

    Store it as an attribute named ``res5`` so that ImageNet weights reach it.
    """
    kwargs = _res5_kwargs(cfg)
    num_blocks = kwargs.pop("num_blocks")
    block_class = kwargs.pop("block_class")
    blocks = ResNet.make_stage(
        block_class,
        num_blocks,
        stride_per_block=[first_stride] + [1] * (num_blocks - 1),
        norm=cfg.MODEL.RESNETS.NORM,
        **kwargs,
    )
    return nn.Sequential(*blocks)


# ---- ImageNet checkpoints --------------------------------------------------------------------

_TV_STEM = re.compile(r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var))$")
_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def _torchvision_to_d2(name: str):
    """torchvision ResNet tensor name -> detectron2 name (None for ``fc`` and BN counters)."""
    if name.endswith("num_batches_tracked") or name.startswith("fc."):
        return None
    if _TV_STEM.match(name):
        return "stem.conv1.weight" if name == "conv1.weight" else "stem.conv1.norm." + name[len("bn1.") :]
    m = _TV_BLOCK.match(name)
    if m is None:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{stage}.{block}.{rest}"


def _strip_to_stage(name: str):
    """``backbone.bottom_up.res2.0.conv1.weight`` -> ``res2.0.conv1.weight`` (None if no stage)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in _RESNET_STAGES:
            return ".".join(parts[i:])
    return None


def read_imagenet_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read an ImageNet ResNet checkpoint; return (detectron2-named tensors, detected naming)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.PERSON_SEARCH.PRETRAINED: no file at {path!r}. Give an ImageNet ResNet checkpoint "
            "in detectron2, Caffe2-Detectron (detectron2 model zoo ImageNetPretrained/MSRA/R-50.pkl) "
            "or torchvision naming (see projects/GALW/docs/models.md), or '' for random init."
        )
    if path.endswith(".pkl"):
        data = load_array_pickle(path)
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    elif isinstance(data, dict) and "blobs" in data and isinstance(data["blobs"], dict):
        data = data["blobs"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a dict of tensors (or {{'model': ...}} / {{'blobs': ...}})")
    tensors = {
        k: (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v)
        for k, v in data.items()
        if isinstance(v, (torch.Tensor, np.ndarray))
    }
    keys = set(tensors)
    if "layer1.0.conv1.weight" in keys:
        fmt, rename = "torchvision", _torchvision_to_d2
    elif "conv1_w" in keys or "res2_0_branch2a_w" in keys:
        fmt = "caffe2"
        converted, _ = convert_c2_detectron_names(dict(tensors))
        tensors, rename = converted, _strip_to_stage
    elif any(_strip_to_stage(k) for k in keys):
        fmt, rename = "detectron2", _strip_to_stage
    else:
        raise ValueError(
            f"{path}: no ResNet tensors recognised (expected detectron2 names like 'res2.0.conv1.weight', "
            f"Caffe2 names like 'res2_0_branch2a_w' or torchvision names like 'layer1.0.conv1.weight'); "
            f"first keys: {sorted(keys)[:5]}"
        )
    out, unused = {}, 0
    for name, value in tensors.items():
        new = rename(name)
        if new is None:
            unused += 1
            continue
        out[new] = value.float()
    logger.info("Read %d ResNet tensors (%s naming) from %s; %d others left unused", len(out), fmt, path, unused)
    return out, fmt


def load_imagenet_weights(model: nn.Module, path: str, *, stride_in_1x1: bool, input_format: str) -> str:
    """Copy ImageNet ResNet weights into ``model``'s trunk and every ``res5`` submodule.

    Model tensors are matched by their name from the first ``stem``/``res2..res5``
    component on. Returns the detected naming ("detectron2", "caffe2", "torchvision").
    """
    weights, fmt = read_imagenet_checkpoint(path)
    bottleneck = any(k.endswith(".conv3.weight") for k in weights)
    if bottleneck and fmt == "torchvision" and (stride_in_1x1 or input_format != "RGB"):
        raise ValueError(
            f"{path} holds torchvision ResNet weights (stride in the 3x3 conv, RGB input): set "
            "MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT 'RGB' and torchvision's PIXEL_MEAN/PIXEL_STD; "
            f"got STRIDE_IN_1X1={stride_in_1x1}, INPUT.FORMAT={input_format!r}"
        )
    if bottleneck and fmt == "caffe2" and (not stride_in_1x1 or input_format != "BGR"):
        raise ValueError(
            f"{path} holds Caffe2 MSRA ResNet weights (stride in the 1x1 conv, BGR input): set "
            f"MODEL.RESNETS.STRIDE_IN_1X1 True and INPUT.FORMAT 'BGR'; got STRIDE_IN_1X1={stride_in_1x1}, "
            f"INPUT.FORMAT={input_format!r}"
        )
    state = model.state_dict()
    new_state, missing, wrong_shape, used = {}, [], [], set()
    for name, value in state.items():
        stage_name = _strip_to_stage(name)
        if stage_name is None or name.endswith("num_batches_tracked"):
            continue
        if stage_name not in weights:
            if fmt == "caffe2" and name.endswith(("running_mean", "running_var")):
                continue  # Caffe2 folds BN statistics into scale and bias: identity stats stay
            missing.append(name)
            continue
        src = weights[stage_name]
        if src.shape != value.shape:
            wrong_shape.append(f"{name}: model {tuple(value.shape)} vs checkpoint {tuple(src.shape)}")
            continue
        new_state[name] = src.to(value.dtype)
        used.add(stage_name)
    if missing or wrong_shape:
        raise ValueError(
            f"{path} ({fmt} naming) does not fit this ResNet (MODEL.RESNETS.DEPTH?): "
            f"{len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong_shape)} with another shape (e.g. {wrong_shape[:3]})"
        )
    model.load_state_dict(new_state, strict=False)
    logger.info(
        "Loaded ImageNet weights (%s naming) from %s into %d tensors; %d checkpoint tensors unused",
        fmt, path, len(new_state), len(set(weights) - used),
    )
    return fmt
