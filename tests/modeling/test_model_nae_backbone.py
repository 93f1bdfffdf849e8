"""Backbone and configs of the person-search model: ImageNet loading in three namings,
frozen stages and norms of the paper configs, OIM size from dataset metadata."""
import os
import pickle

import pytest
import torch
import torchvision
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

import galw
from galw.modeling.backbone import load_imagenet_weights
from nae_helpers import CONFIG_DIR, tiny_nae_cfg

SMALL = ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4)


def _tv_resnet18_state():
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None)
    for m in model.modules():  # non-trivial BN statistics, so a wrong mapping shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.state_dict()


def _d2_names(tv_state):
    """The same tensors under detectron2 names, written by hand for the test."""
    out = {"stem.conv1.weight": tv_state["conv1.weight"]}
    for s in ("weight", "bias", "running_mean", "running_var"):
        out[f"stem.conv1.norm.{s}"] = tv_state[f"bn1.{s}"]
    for layer in range(1, 5):
        for block in range(2):
            tv, d2 = f"layer{layer}.{block}", f"res{layer + 1}.{block}"
            for k in (1, 2):
                out[f"{d2}.conv{k}.weight"] = tv_state[f"{tv}.conv{k}.weight"]
                for s in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{d2}.conv{k}.norm.{s}"] = tv_state[f"{tv}.bn{k}.{s}"]
            if f"{tv}.downsample.0.weight" in tv_state:
                out[f"{d2}.shortcut.weight"] = tv_state[f"{tv}.downsample.0.weight"]
                for s in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{d2}.shortcut.norm.{s}"] = tv_state[f"{tv}.downsample.1.{s}"]
    return out


def _check_loaded(model, tv_state, stats=True):
    sd = model.state_dict()
    res5 = "branches.NAEBranch.roi_heads.res5"
    pairs = {
        "backbone.stem.conv1.weight": "conv1.weight",
        "backbone.stem.conv1.norm.bias": "bn1.bias",
        "backbone.res2.1.conv2.weight": "layer1.1.conv2.weight",
        "backbone.res4.0.shortcut.weight": "layer3.0.downsample.0.weight",
        "backbone.res4.1.conv1.norm.weight": "layer3.1.bn1.weight",
        f"{res5}.0.conv1.weight": "layer4.0.conv1.weight",
        f"{res5}.0.shortcut.norm.bias": "layer4.0.downsample.1.bias",
        f"{res5}.1.conv2.weight": "layer4.1.conv2.weight",
    }
    if stats:
        pairs[f"{res5}.1.conv2.norm.running_var"] = "layer4.1.bn2.running_var"
        pairs["backbone.res3.0.conv1.norm.running_mean"] = "layer2.0.bn1.running_mean"
    for ours, theirs in pairs.items():
        assert torch.equal(sd[ours], tv_state[theirs]), ours


def _build(path, *opts):
    torch.manual_seed(0)
    return build_model(tiny_nae_cfg(*SMALL, "MODEL.PERSON_SEARCH.PRETRAINED", str(path), *opts))


def test_torchvision_checkpoint(tmp_path):
    tv = _tv_resnet18_state()
    torch.save(tv, tmp_path / "resnet18.pth")
    _check_loaded(_build(tmp_path / "resnet18.pth"), tv)


def test_detectron2_named_pkl_with_prefix(tmp_path):
    tv = _tv_resnet18_state()
    blobs = {"backbone.bottom_up." + k: v.numpy() for k, v in _d2_names(tv).items()}
    with open(tmp_path / "r18.pkl", "wb") as f:
        pickle.dump({"model": blobs, "__author__": "test"}, f)
    _check_loaded(_build(tmp_path / "r18.pkl", "MODEL.RESNETS.NORM", "FrozenBN"), tv)


def test_caffe2_named_pkl(tmp_path):
    tv = _tv_resnet18_state()
    c2 = {"conv1_w": tv["conv1.weight"], "res_conv1_bn_s": tv["bn1.weight"], "res_conv1_bn_b": tv["bn1.bias"]}
    for layer in range(1, 5):
        for block in range(2):
            tv_b, c2_b = f"layer{layer}.{block}", f"res{layer + 1}_{block}"
            for k, branch in ((1, "branch2a"), (2, "branch2b")):
                c2[f"{c2_b}_{branch}_w"] = tv[f"{tv_b}.conv{k}.weight"]
                c2[f"{c2_b}_{branch}_bn_s"] = tv[f"{tv_b}.bn{k}.weight"]
                c2[f"{c2_b}_{branch}_bn_b"] = tv[f"{tv_b}.bn{k}.bias"]
            if f"{tv_b}.downsample.0.weight" in tv:
                c2[f"{c2_b}_branch1_w"] = tv[f"{tv_b}.downsample.0.weight"]
                c2[f"{c2_b}_branch1_bn_s"] = tv[f"{tv_b}.downsample.1.weight"]
                c2[f"{c2_b}_branch1_bn_b"] = tv[f"{tv_b}.downsample.1.bias"]
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump({"blobs": {k: v.numpy() for k, v in c2.items()}}, f)
    model = _build(tmp_path / "R-18.pkl", "MODEL.RESNETS.NORM", "FrozenBN")
    _check_loaded(model, tv, stats=False)
    # Caffe2 folds BN statistics into scale/bias: FrozenBN keeps identity statistics
    norm = model.backbone.res3[0].conv1.norm
    assert isinstance(norm, FrozenBatchNorm2d)
    assert torch.equal(norm.running_mean, torch.zeros(128)) and torch.equal(norm.running_var, torch.ones(128))


def test_wrong_depth_and_conventions_are_errors(tmp_path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(ValueError, match="does not fit"):
        _build(tmp_path / "resnet50.pth", "INPUT.FORMAT", "RGB")  # an R-50 file for the R-18 model
    with pytest.raises(ValueError, match="STRIDE_IN_1X1"):
        load_imagenet_weights(nn.Module(), str(tmp_path / "resnet50.pth"), stride_in_1x1=True, input_format="RGB")
    with pytest.raises(FileNotFoundError, match="PRETRAINED"):
        _build(tmp_path / "absent.pkl")


def _paper_cfg(name, *opts):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "nae", name))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize("name,images", [("nae_R50_cuhk.yaml", 11206), ("nae_R50_prw.yaml", 5704)])
def test_reference_schedule(name, images):
    """NAE alone trains NAE4PS's README recipe, the one behind its published figures (docs/fidelity.md;
    each value with its source in tests/test_reference_configs.py): 22 epochs of whole batches (the last
    partial batch dropped), lr 0.003 /10 after epoch 16, warm-up over the first epoch."""
    cfg = _paper_cfg(name)
    per_epoch = images // cfg.SOLVER.IMS_PER_BATCH
    assert cfg.SOLVER.MAX_ITER == 22 * per_epoch
    assert tuple(cfg.SOLVER.STEPS) == (16 * per_epoch,)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.GAMMA) == (0.003, 0.9, 0.1)
    assert cfg.SOLVER.WARMUP_ITERS == per_epoch - 1
    assert (cfg.INPUT.PS.TEST_LONG_SIDE, cfg.INPUT.PS.TEST_SHORT_SIDE) == (1500, 900)
    assert cfg.MODEL.OIM.TEMPERATURE == 30.0 and cfg.MODEL.NAE.EMBEDDING_DIM == 256


def test_paper_model_structure():
    cfg = _paper_cfg("nae_R50_cuhk.yaml", "MODEL.DEVICE", "cpu", "MODEL.PERSON_SEARCH.PRETRAINED", "",
                     "DATASETS.TRAIN", (), "MODEL.OIM.NUM_LABELED", 5532)
    model = build_model(cfg)
    assert set(model.backbone.output_shape()) == {"res4"} and not hasattr(model.backbone, "res5")
    heads = model.branches["NAEBranch"].roi_heads
    assert heads.res5[0].conv3.out_channels == 2048 and len(heads.res5) == 3
    assert heads.oim.lookup_table.shape == (5532, 256) and heads.oim.unlabeled_queue.shape == (5000, 256)
    assert not any(p.requires_grad for p in model.backbone.stem.parameters())
    assert not any(p.requires_grad for p in model.backbone.res2.parameters())
    assert all(p.requires_grad for p in model.backbone.res3.parameters())
    assert isinstance(model.backbone.res4[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(heads.res5[0].conv1.norm, FrozenBatchNorm2d)


def test_oim_size_from_train_metadata():
    name = "galw_test_nae_metadata_train"
    MetadataCatalog.get(name).set(num_pids=7)
    try:
        model = build_model(tiny_nae_cfg(*SMALL, "DATASETS.TRAIN", (name,), "MODEL.OIM.NUM_LABELED", 0))
        assert model.branches["NAEBranch"].roi_heads.oim.lookup_table.shape[0] == 7
        with pytest.raises(ValueError, match="num_pids=7"):
            build_model(tiny_nae_cfg(*SMALL, "DATASETS.TRAIN", (name,), "MODEL.OIM.NUM_LABELED", 5))
    finally:
        MetadataCatalog.remove(name)
    # No size anywhere: built for inference (the checkpoint sizes the table), never trained as is.
    oim = build_model(tiny_nae_cfg(*SMALL, "MODEL.OIM.NUM_LABELED", 0)).branches["NAEBranch"].roi_heads.oim
    assert oim.num_labeled is None
    with pytest.raises(ValueError, match="NUM_LABELED"):
        oim(torch.zeros(2, oim.feat_dim), torch.zeros(2))
