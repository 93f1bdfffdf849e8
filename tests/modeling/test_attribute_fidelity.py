"""The ALM as Tang et al.'s code (model/inception_iccv.py): the transform is
predicted from the AVERAGE-pooled gated map, the attended region is sampled with BORDER padding and
average-pooled, the laterals are linear, the main classifier reads the deepest crop itself."""
import torch
import torch.nn.functional as F

import galw
from detectron2.config import get_cfg

from galw.modeling.attribute.alm import AttributeLocalization
from attribute_helpers import small_branch


def test_alm_is_tangs_formulation():
    torch.manual_seed(3)
    alm = AttributeLocalization(channels=8, num_attributes=2, se_reduction=2)
    with torch.no_grad():
        alm.loc_weight.normal_(std=0.3)
        alm.loc_bias.normal_()
        alm.cls_weight.normal_()
    x = torch.randn(3, 8, 10, 10)
    logits, theta = alm(x)
    for a in range(2):
        gate = torch.sigmoid(F.relu(x.mean(dim=(2, 3)) @ alm.se_reduce_weight[a].T + alm.se_reduce_bias[a])
                             @ alm.se_expand_weight[a].T + alm.se_expand_bias[a])
        gated = x * gate[:, :, None, None] + x  # stn_feature
        raw = gated.mean(dim=(2, 3)) @ alm.loc_weight[a].T + alm.loc_bias[a]  # avg_pool2d before the stn
        theta_a = torch.zeros(3, 2, 3)
        theta_a[:, 0, 0], theta_a[:, 1, 1] = torch.sigmoid(raw[:, 0]), torch.sigmoid(raw[:, 1])
        theta_a[:, 0, 2], theta_a[:, 1, 2] = torch.tanh(raw[:, 2]), torch.tanh(raw[:, 3])
        grid = F.affine_grid(theta_a, list(x.shape), align_corners=False)
        region = F.grid_sample(gated, grid, padding_mode="border", align_corners=False)
        direct = region.mean(dim=(2, 3)) @ alm.cls_weight[a] + alm.cls_bias[a]  # gap, fc
        assert torch.allclose(theta[:, a], theta_a, atol=1e-6)
        assert torch.allclose(logits[:, a], direct, atol=1e-5)


def test_attribute_defaults_are_the_reference():
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    att = cfg.MODEL.ATTRIBUTE
    assert (att.POOLING, att.PADDING_MODE, att.LATERAL_RELU) == ("avg", "border", False)


def test_linear_laterals_and_main_classifier_on_the_deepest_crop():
    branch = small_branch()
    assert branch.main_classifier.in_features == 16  # res4's channels in attribute_helpers.SHAPES
    assert not branch.lateral_relu
    features = {"res3": torch.randn(1, 8, 16, 16), "res4": torch.randn(1, 16, 8, 8)}
    from detectron2.structures import Boxes

    boxes = [Boxes(torch.tensor([[10.0, 20, 60, 110]]))]
    main = branch.attribute_logits(features, boxes)[0]
    crop = branch.poolers[-1](features["res4"], torch.tensor([[0.0, 10, 20, 60, 110]]))
    assert torch.allclose(main, branch.main_classifier(crop.mean(dim=(2, 3))), atol=1e-6)


def test_lateral_relu_option_rectifies_what_each_alm_reads():
    """LATERAL_RELU True (the option): each ALM reads the fused laterals after a ReLU; False (the
    reference): the linear laterals, negative values kept. Same weights, inputs captured by hooks."""
    from detectron2.structures import Boxes

    torch.manual_seed(5)
    features = {"res3": torch.randn(1, 8, 16, 16), "res4": torch.randn(1, 16, 8, 8)}
    boxes = [Boxes(torch.tensor([[10.0, 20, 60, 110]]))]
    seen = {}
    for relu in (False, True):
        torch.manual_seed(0)
        branch = small_branch(LATERAL_RELU=relu)
        assert branch.lateral_relu is relu
        inputs = []
        for alm in branch.alms:
            alm.register_forward_hook(lambda m, args, out, seen_now=inputs: seen_now.append(args[0].detach()))
        with torch.no_grad():
            branch.attribute_logits(features, boxes)
        rois = torch.tensor([[0.0, 10, 20, 60, 110]])
        with torch.no_grad():
            lat = [conv(pool(features[f], rois)) for f, pool, conv in
                   zip(branch.in_features, branch.poolers, branch.laterals)]
        if relu:
            lat = [F.relu(x) for x in lat]
        assert torch.allclose(inputs[-1], lat[-1], atol=1e-6)  # the deepest level alone
        assert torch.allclose(inputs[0], torch.cat([lat[1], lat[0]], dim=1), atol=1e-6)  # deep first, then res3
        seen[relu] = inputs
    assert (seen[False][0] < 0).any() and not (seen[True][0] < 0).any()
