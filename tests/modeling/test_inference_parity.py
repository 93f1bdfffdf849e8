"""Inference on CPU runs the deformable convs through ``deform_conv2d_gather`` (weight first, then
one embedding_bag of the bilinear corners); on the same weights its outputs equal, within 1e-5,
those of the kernels it replaces at inference: the grid_sample one (the CPU default before it) and
torchvision's (the reference, galw/modeling/deform_conv.py), for AlignPS and ROI-AlignPS*. Scores
and embeddings (at most 1) are held to 1e-5 absolute; maps, distances and boxes (up to hundreds of
pixels, where one float32 step is 3e-5) to 1e-5 of their largest value, the spread the grid_sample
kernel itself shows against torchvision's. Training still runs the grid_sample kernel."""
import pytest
import torch

from galw.modeling import deform_conv as dc
from galw.modeling.deform_conv import DeformConv2d

from test_deform_conv import CASES, _case

CONFIGS = [
    "projects/GALW/configs/alignps/alignps_R18_synth_cpu.yaml",
    "projects/GALW/configs/alignps/roi_alignps_R18_synth_cpu.yaml",
]


def _model(config_file):
    import galw
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from galw.config_file import merge_config_file

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    merge_config_file(cfg, config_file)
    # every location a candidate (a random-init classifier scores near its prior, below the test threshold)
    cfg.merge_from_list(["DATASETS.TRAIN", (), "MODEL.OIM.NUM_LABELED", 4, "MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.0])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # learned offsets and masks, not the zero init of the head's DCNs
        if isinstance(m, torch.nn.Conv2d) and m.out_channels in (18, 27):
            torch.nn.init.normal_(m.weight, std=0.05)
            torch.nn.init.normal_(m.bias, std=0.5)
    return model


def _images():
    g = torch.Generator().manual_seed(1)
    images = []
    for _ in range(2):
        img = torch.randint(0, 80, (3, 240, 320), generator=g, dtype=torch.uint8)
        img[:, 40:200, 60:120] = 200
        img[:, 80:230, 180:240] = 150
        images.append({"image": img, "height": 240, "width": 320})
    return images


def _set_impl(model, impl):
    convs = [m for m in model.modules() if isinstance(m, DeformConv2d)]
    assert convs
    for m in convs:
        m.impl = impl


def _dense_outputs(model, images):
    """The AlignPS branch's dense maps and head outputs (every location, so no ranking can reorder them)."""
    branch = model.branches["AlignPSBranch"]
    with torch.no_grad():
        batch = model.preprocess_image(images)
        maps = branch.dense_features(model.backbone(batch.tensor))
        logits, dists, ctrs = branch.head(maps)
    return maps + logits + dists + ctrs


def _close(got, ref, scale_free=False):
    tol = 1e-5 if scale_free else 1e-5 * max(1.0, float(ref.abs().max()))
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= tol


@pytest.mark.parametrize("reference", ["torchvision", "grid_sample"])
@pytest.mark.parametrize("config_file", CONFIGS)
def test_gather_inference_equals_the_previous_kernels(config_file, reference, monkeypatch):
    model = _model(config_file)
    images = _images()
    _set_impl(model, reference)
    ref_dense = _dense_outputs(model, images)
    with torch.no_grad():
        ref = model(images)

    calls = []
    gather = dc.deform_conv2d_gather
    monkeypatch.setattr(dc, "deform_conv2d_gather", lambda *a, **k: calls.append(1) or gather(*a, **k))
    _set_impl(model, "auto")
    dense = _dense_outputs(model, images)
    with torch.no_grad():
        got = model(images)
    assert calls, "CPU inference with DEFORM_CONV_IMPL auto did not run the gather kernel"

    assert len(dense) == len(ref_dense) == 4
    for a, b in zip(ref_dense, dense):
        _close(b, a)
    for r, o in zip(ref, got):
        r, o = r["instances"], o["instances"]
        assert len(r) == len(o) > 0
        _close(o.pred_boxes.tensor, r.pred_boxes.tensor)
        _close(o.scores, r.scores, scale_free=True)
        _close(o.embeddings, r.embeddings, scale_free=True)


def test_training_keeps_the_grid_sample_kernel(monkeypatch):
    conv = DeformConv2d(4, 6, 3, padding=1)
    x, offset = torch.randn(1, 4, 8, 8), torch.randn(1, 18, 8, 8)
    calls = []
    monkeypatch.setattr(dc, "deform_conv2d_grid_sample", lambda *a, **k: calls.append("gs") or torch.zeros(1))
    monkeypatch.setattr(dc, "deform_conv2d_gather", lambda *a, **k: calls.append("gather") or torch.zeros(1))
    conv(x, offset)  # parameters require grad: training
    with torch.no_grad():
        conv(x, offset)
    conv.requires_grad_(False)
    conv(x, offset)  # no tensor needs a gradient: inference
    conv.requires_grad_(True)
    conv(x, offset.requires_grad_())  # the offset conv is trained through it
    assert calls == ["gs", "gather", "gather", "gs"]


@pytest.mark.parametrize("case", CASES)
def test_gather_kernel_equals_torchvision_values(case):
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    tensors, kwargs = _case(torch.Generator().manual_seed(0), *case, dtype=torch.float64)
    x, offset, weight, bias = tensors[:4]
    mask = tensors[4] if len(tensors) == 5 else None
    ref = torchvision_deform_conv2d(x, offset, weight, bias, mask=mask, **kwargs)
    with torch.no_grad():
        got = dc.deform_conv2d(x, offset, weight, bias, mask=mask, impl="auto", **kwargs)
        if case[9] == case[10] == 1:  # one weight and offset group: the gather kernel's reach
            torch.testing.assert_close(dc.deform_conv2d_gather(x, offset, weight, bias, mask=mask, **kwargs), ref,
                                       rtol=1e-10, atol=1e-10)
        else:
            with pytest.raises(ValueError, match="one weight and offset group"):
                dc.deform_conv2d_gather(x, offset, weight, bias, mask=mask, **kwargs)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
