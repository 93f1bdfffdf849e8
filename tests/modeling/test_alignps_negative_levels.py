"""MODEL.ALIGNPS.NEGATIVE_LEVELS: training-only levels coarser than the real ones whose locations are
negatives of the focal loss only, as the AlignPS reference trains P4..P7 (neck
mmdet/models/necks/fpn_dcn_lconv3_dcn.py:201-232, head fcos_reid_head_focal_sub_triqueue3.py:66)."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances

import galw
from alignps_helpers import SYNTH_NUM_PIDS, normalized_images, small_branch_cfg, synthetic_batch
from conftest import CONFIG_DIR, ROI_ALIGNPS_TASKS, train_losses
from galw.modeling import build_branch
from galw.modeling.alignps import AFAFPN, AlignPSBranch, BatchHardTripletLoss
from galw.modeling.oim import OIMLoss


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CPU: one thread is several times faster than two under load
    yield
    torch.set_num_threads(threads)


def _branch_and_backbone(negative_levels, seed=0):
    torch.manual_seed(seed)
    cfg = small_branch_cfg()
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = negative_levels
    backbone = build_backbone(cfg)
    return cfg, backbone, build_branch("AlignPSBranch", cfg, backbone.output_shape())


def test_training_builds_four_negative_levels_eval_one():
    cfg, backbone, branch = _branch_and_backbone(4)
    assert branch.strides == [8] and branch.negative_strides == [16, 32, 64, 128]
    assert branch.head.strides == [8, 16, 32, 64, 128] and len(branch.head.scales) == 5
    assert len(branch.afa.outputs) == 3 and len(branch.afa.extras) == 2
    images = normalized_images(cfg, synthetic_batch())  # 2 x 3 x 96 x 128
    backbone.eval()
    with torch.no_grad():
        feats = backbone(images.tensor)
        branch.train()
        branch.res5.eval()  # its BN as in eval, so that train and eval P3 compare
        maps = branch.dense_features(feats)
        raw = branch.afa([feats["res3"], feats["res4"], branch.res5(feats["res4"])])
        logits, dists, ctrs = branch.head(maps)
        branch.eval()
        eval_maps = branch.dense_features(feats)
        eval_logits, _, _ = branch.head(eval_maps)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 12, 16), (2, 32, 6, 8), (2, 32, 3, 4), (2, 32, 2, 2),
                                              (2, 32, 1, 1)]
    assert len(logits) == len(dists) == len(ctrs) == 5
    assert [tuple(m.shape) for m in eval_maps] == [(2, 32, 12, 16)] and len(eval_logits) == 1
    # the mean is subtracted on the real level only; the negative levels are the neck's maps as they are
    assert torch.allclose(maps[0], raw[0] - raw[0].mean(dim=(2, 3), keepdim=True), atol=1e-6)
    assert maps[0].mean(dim=(2, 3)).abs().max() < 1e-5
    for m, r in zip(maps[1:], raw[1:]):
        assert torch.equal(m, r)
    assert raw[1].mean(dim=(2, 3)).abs().max() > 1e-3
    assert torch.allclose(eval_maps[0], maps[0], atol=1e-6)


def test_extra_levels_are_stride_two_convs_on_p5_then_relu_p6():
    torch.manual_seed(0)
    afa = AFAFPN([8, 16, 32], 12, num_outs=1, negative_levels=4).train()
    xs = [torch.randn(1, 8, 24, 20), torch.randn(1, 16, 12, 10), torch.randn(1, 32, 6, 5)]
    with torch.no_grad():
        p3, p4, p5, p6, p7 = afa(xs)
        afa.eval()
        (eval_p3,) = afa(xs)
    assert [tuple(p.shape[-2:]) for p in (p3, p4, p5, p6, p7)] == [(24, 20), (12, 10), (6, 5), (3, 3), (2, 2)]
    assert torch.equal(eval_p3, p3)
    c6, c7 = afa.extras
    assert torch.allclose(p6, F.conv2d(p5, c6.weight, c6.bias, stride=2, padding=1), atol=1e-6)
    assert torch.allclose(p7, F.conv2d(F.relu(p6), c7.weight, c7.bias, stride=2, padding=1), atol=1e-6)
    assert not torch.allclose(p7, F.conv2d(p6, c7.weight, c7.bias, stride=2, padding=1), atol=1e-4)
    # the reference's xavier_init(distribution="uniform"): U(+-sqrt(6 / (fan_in + fan_out))), bias 0
    bound = (6.0 / (12 * 9 + 12 * 9)) ** 0.5
    for conv in (c6, c7):
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert torch.equal(conv.bias, torch.zeros(12))
    # with three real levels the four negative ones are all stride-2 convs
    three = AFAFPN([8, 16, 32], 12, num_outs=3, negative_levels=2)
    assert len(three.outputs) == 3 and len(three.extras) == 2


def _loss_inputs(num_levels, seed=0):
    """Random per-level maps, logits, distances (pixels) and centerness of 2 images 64x48 at strides 8..128."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(6, 8), (3, 4), (2, 2), (1, 1), (1, 1)][:num_levels]
    strides = [8, 16, 32, 64, 128][:num_levels]
    maps = [torch.randn(2, 8, h, w, generator=g) for h, w in sizes]
    logits = [torch.randn(2, 1, h, w, generator=g) for h, w in sizes]
    dists = [torch.rand(2, 4, h, w, generator=g) * 3 * s for (h, w), s in zip(sizes, strides)]
    ctrs = [torch.randn(2, 1, h, w, generator=g) for h, w in sizes]
    gts = []
    for boxes, pids in (([[4.0, 6.0, 30.0, 44.0], [34.0, 2.0, 60.0, 40.0]], [0, 1]),
                        ([[10.0, 4.0, 40.0, 46.0], [42.0, 10.0, 62.0, 44.0]], [1, -1])):
        inst = Instances((48, 64))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_pids = torch.tensor(pids)
        gts.append(inst)
    return strides, maps, logits, dists, ctrs, gts


def _direct_branch(strides, negative_levels, oim):
    return AlignPSBranch(
        in_features=["res3", "res4"], res5=nn.Identity(), afa=nn.Identity(), head=nn.Identity(), oim=oim,
        triplet=BatchHardTripletLoss(0.3), strides=strides, size_ranges=[[-1.0, 1e8]],
        negative_levels=negative_levels, center_radius=1.5, focal_alpha=0.25, focal_gamma=2.0,
        triplet_with_lut=True, score_thresh=0.05, pre_nms_topk=1000, nms_thresh=0.5, max_detections=100,
        embed_pooling="center",
    ).train()


def test_negative_levels_add_only_focal_negatives():
    strides, maps, logits, dists, ctrs, gts = _loss_inputs(5)
    oim = OIMLoss(8, 2, 4, 0.5, 10.0, focal_gamma=2.0, renormalize=False)
    oim.lookup_table.copy_(F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=1))
    with_neg = _direct_branch(strides, 4, copy.deepcopy(oim))
    p3_only = _direct_branch(strides[:1], 0, copy.deepcopy(oim))
    ours = with_neg.losses(maps, logits, dists, ctrs, gts)
    p3 = p3_only.losses(maps[:1], logits[:1], dists[:1], ctrs[:1], gts)

    num_pos = 0
    for inst in gts:  # center sampling on P3 (radius 1.5 * 8 px around the centre, clipped to the box)
        b = inst.gt_boxes.tensor
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        ys, xs = torch.meshgrid(torch.arange(6) * 8.0 + 4, torch.arange(8) * 8.0 + 4, indexing="ij")
        inside = ((xs[..., None] > torch.maximum(cx - 12, b[:, 0])) & (xs[..., None] < torch.minimum(cx + 12, b[:, 2]))
                  & (ys[..., None] > torch.maximum(cy - 12, b[:, 1])) & (ys[..., None] < torch.minimum(cy + 12, b[:, 3])))
        num_pos += int(inside.any(dim=2).sum())
    assert num_pos > 0
    norm = num_pos + len(gts)
    negatives = torch.cat([lg.flatten() for lg in logits[1:]])
    neg_sum = sigmoid_focal_loss(negatives, torch.zeros_like(negatives), alpha=0.25, gamma=2.0, reduction="sum")
    assert float(ours["loss_aps_cls"]) == pytest.approx(float(p3["loss_aps_cls"]) + float(neg_sum) / norm, rel=1e-6)
    assert float(neg_sum) / norm > 1e-3  # the negative levels really add to the loss
    for key in ("loss_aps_box", "loss_aps_ctr", "loss_aps_oim", "loss_aps_tri"):
        assert float(ours[key]) == pytest.approx(float(p3[key]), rel=1e-6, abs=1e-7), key


def test_negative_levels_keep_every_scale_in_the_graph():
    """The negative levels' box outputs get a zero gradient (not none), so DDP sees every parameter used."""
    strides, maps, logits, dists, ctrs, gts = _loss_inputs(5)
    dists = [d.clone().requires_grad_() for d in dists]
    branch = _direct_branch(strides, 4, OIMLoss(8, 2, 4, 0.5, 10.0, focal_gamma=2.0, renormalize=False))
    sum(branch.losses(maps, logits, dists, ctrs, gts).values()).backward()
    assert dists[0].grad.abs().sum() > 0
    for d in dists[1:]:
        assert d.grad is not None and torch.equal(d.grad, torch.zeros_like(d))


def test_losses_need_every_trained_level():
    strides, maps, logits, dists, ctrs, gts = _loss_inputs(5)
    branch = _direct_branch(strides, 4, OIMLoss(8, 2, 4, 0.5, 10.0))
    with pytest.raises(ValueError, match="NEGATIVE_LEVELS"):
        branch.losses(maps[:1], logits[:1], dists[:1], ctrs[:1], gts)


@pytest.mark.parametrize("value", [-1, 5, "4", True, 2.0])
def test_bad_negative_levels_fail_at_build(value):
    cfg = small_branch_cfg()
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = value
    backbone = build_backbone(cfg)
    with pytest.raises(ValueError, match="MODEL.ALIGNPS.NEGATIVE_LEVELS"):
        build_branch("AlignPSBranch", cfg, backbone.output_shape())


def test_negative_levels_are_checked_once_at_build(monkeypatch):
    """One rule with one message: from_config checks the value, the branch and its neck take it as given."""
    from galw.modeling.alignps import branch as branch_module

    calls, check = [], branch_module._check_negative_levels
    monkeypatch.setattr(branch_module, "_check_negative_levels", lambda v, n: calls.append((v, n)) or check(v, n))
    cfg = small_branch_cfg()
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = 2
    backbone = build_backbone(cfg)
    branch = build_branch("AlignPSBranch", cfg, backbone.output_shape())
    assert calls == [(2, 1)] and branch.negative_strides == [16, 32]
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = -1
    with pytest.raises(ValueError, match=r"^MODEL.ALIGNPS.NEGATIVE_LEVELS must be an int >= 0; got -1$"):
        build_branch("AlignPSBranch", cfg, backbone.output_shape())
    assert calls == [(2, 1), (-1, 1)]


def test_more_than_five_levels_in_all_fail_at_build():
    cfg = small_branch_cfg()
    cfg.MODEL.ALIGNPS.SIZE_RANGES = [[-1, 32], [32, 64], [64, 1e8]]
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = 3
    backbone = build_backbone(cfg)
    with pytest.raises(ValueError, match=r"MODEL.ALIGNPS.NEGATIVE_LEVELS.*3 \+ 3"):
        build_branch("AlignPSBranch", cfg, backbone.output_shape())
    cfg.MODEL.ALIGNPS.NEGATIVE_LEVELS = 2
    branch = build_branch("AlignPSBranch", cfg, backbone.output_shape())
    assert branch.strides == [8, 16, 32] and branch.negative_strides == [64, 128]


def _eval_outputs(backbone, branch, images):
    branch.eval()
    branch.score_thresh = 0.0  # untrained logits sit near the prior 0.01: keep every candidate
    with torch.no_grad():
        feats = backbone(images.tensor)
        maps = branch.dense_features(feats)
        head = branch.head(maps)
        dets = branch.detect(images, feats)
    return maps, head, dets


def test_checkpoint_loads_into_itself_and_eval_ignores_extra_modules(tmp_path):
    cfg, backbone, trained = _branch_and_backbone(4, seed=0)
    backbone.eval()
    with torch.no_grad():  # non-default values in the modules eval does not use
        for i, scale in enumerate(trained.head.scales):
            scale.scale.fill_(1.0 + 0.1 * i)
        for conv in trained.afa.extras:
            conv.bias.normal_()
    path = os.path.join(tmp_path, "branch.pth")
    torch.save({"model": trained.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]

    _, _, same = _branch_and_backbone(4, seed=1)
    same.load_state_dict(state)  # strict: every key of the checkpoint, nothing missing
    _, _, real_only = _branch_and_backbone(0, seed=2)
    result = real_only.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    extra = {k for k in result.unexpected_keys}
    assert extra and all(k.startswith(("afa.outputs.1.", "afa.outputs.2.", "afa.extras.", "head.scales."))
                         for k in extra)
    assert {k for k in extra if k.startswith("head.scales.")} == {f"head.scales.{i}.scale" for i in range(1, 5)}

    images = normalized_images(cfg, synthetic_batch())
    ref_maps, ref_head, ref_dets = _eval_outputs(backbone, trained, images)
    assert len(ref_dets[0]) > 0
    for other in (same, real_only):
        maps, head, dets = _eval_outputs(backbone, other, images)
        assert len(maps) == 1 and torch.equal(maps[0], ref_maps[0])
        for ours, theirs in zip(head, ref_head):
            assert len(ours) == 1 and torch.equal(ours[0], theirs[0])
        for d, r in zip(dets, ref_dets):
            assert torch.equal(d.pred_boxes.tensor, r.pred_boxes.tensor)
            assert torch.equal(d.scores, r.scores) and torch.equal(d.embeddings, r.embeddings)


def test_roi_alignps_r18_synth_trains_with_negative_levels():
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "alignps", "roi_alignps_R18_synth_cpu.yaml"))
    cfg.merge_from_list([
        "DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.OIM.NUM_LABELED", SYNTH_NUM_PIDS,
        "MODEL.ALIGNPS.FPN_CHANNELS", 32, "MODEL.ALIGNPS.NUM_CONVS", 1, "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16,
        "MODEL.NAE.EMBEDDING_DIM", 32, "MODEL.OIM.QUEUE_SIZE", 16, "MODEL.ALIGNPS.NEGATIVE_LEVELS", 4,
    ])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    branch = model.branches["AlignPSBranch"]
    assert branch.negative_strides == [16, 32, 64, 128]
    batch = synthetic_batch()
    history = train_losses(lambda: model(batch), model.parameters(), steps=4, lr=0.01)
    assert set(history[0]) == set(ROI_ALIGNPS_TASKS)
    for step in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in step.values()), step
    assert branch.afa.extras[1].weight.grad is not None and branch.afa.extras[1].weight.grad.abs().sum() > 0
    assert all(s.scale.grad is not None for s in branch.head.scales)
