"""AlignPS and NAE alone follow the reference configs behind their published figures.

Config values: tests/fixtures/reference_configs.json (repository@commit, file:line of each value;
docs/fidelity.md, section "AlignPS and NAE alone: the reference configs", argues what differs).
Loss options: tests/fixtures/reference_losses.json holds fixed inputs and the losses the reference
code gave on them (its provenance field names the files and lines that were run).
"""
import json
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import CONFIG_DIR, ROOT
from galw.config_file import load_config
from galw.modeling.oim import OIMLoss
from nae_helpers import tiny_nae_cfg

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
with open(os.path.join(FIXTURES, "reference_configs.json")) as _f:
    PINS = json.load(_f)
with open(os.path.join(FIXTURES, "reference_losses.json")) as _f:
    LOSSES = json.load(_f)


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return [list(v) if isinstance(v, (list, tuple)) else v for v in cfg] if isinstance(cfg, (list, tuple)) else cfg


CASES = [(rel, pin) for group in PINS["configs"] for rel in group["files"] for pin in group["values"]]


@pytest.mark.parametrize("rel,pin", CASES, ids=[f"{r}:{p['key']}" for r, p in CASES])
def test_config_holds_the_reference_value(rel, pin):
    got = _value(load_config(os.path.join(CONFIG_DIR, rel)), pin["key"])
    if isinstance(pin["value"], float):
        assert got == pytest.approx(pin["value"], rel=1e-9), (rel, pin)
    else:
        assert got == pin["value"], (rel, pin)
    assert pin["source"], pin


def test_every_pinned_value_names_its_source():
    repos = {group["repository"] for group in PINS["configs"]}
    assert repos == {"daodaofr/AlignPS@5d62dbcd39a4f5ed996e15057c1784df9a1161bb",
                     "DeanChan/NAE4PS@ec43d1efb67c813b54141f2e1aaf8fed36c94578"}
    for group in PINS["configs"]:
        for pin in group["values"]:
            assert ":" in pin["source"] or pin["source"].startswith("argued"), pin


def test_the_alignps_neck_is_cited_where_it_is_selected_and_where_num_outs_is_set():
    """The AFA neck (FPNDcnLconv3Dcn) is selected by the derived reference configs; its num_outs and extra
    convs come from their base config, whose own neck is a plain FPN: both are cited, with lines."""
    derived = ("configs/fcos/fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_dcn_4x4_1x_cuhk_reid_1500_"
               "stage1_fpncat_dcn_epoch24_multiscale_focal_x4_bg-2_lconv3dcn_sub_triqueue_dcn0.py:8-9",
               "configs/fcos/prw_base_focal_labelnorm_sub_ldcn_fg15_wd1-3.py:5-6")
    base = "configs/fcos/fcos_r50_caffe_fpn_gn-head_4x4_1x_cuhk_reid_1000.py:19-27"
    alignps = next(g for g in PINS["configs"] if g["repository"].startswith("daodaofr/AlignPS@"))
    source = next(p["source"] for p in alignps["values"] if p["key"] == "MODEL.ALIGNPS.NEGATIVE_LEVELS")
    assert source.startswith("neck FPNDcnLconv3Dcn selected by " + derived[0])
    assert derived[1] in source and f"inheriting num_outs=5 from its _base_ (line 1) {base}" in source
    with open(os.path.join(ROOT, "projects", "GALW", "docs", "fidelity.md")) as f:
        row = next(line for line in f if line.startswith("| trained levels |"))
    assert "AP-CUHK:8-9 and AP-PRW:5-6 select that neck (`FPNDcnLconv3Dcn`)" in row
    assert "from their `_base_` (line 1) AP-CUHK-base:19-27 its num_outs 5" in row


def _oim(case, **kwargs):
    lut = torch.tensor(LOSSES["lookup_table"])
    queue = torch.tensor(LOSSES["queue"])
    oim = OIMLoss(lut.shape[1], lut.shape[0], queue.shape[0], momentum=0.5, focal_gamma=2.0, **kwargs).train()
    oim.lookup_table.copy_(lut)
    oim.unlabeled_queue.copy_(queue)
    return oim


@pytest.mark.parametrize(
    "case,kwargs",
    [
        ("alignps_prw", dict(temperature=15.0, queue_temperature=10.0, renormalize=True, normalizer="all")),
        ("alignps_cuhk", dict(temperature=10.0, renormalize=False, normalizer="all")),
    ],
)
def test_alignps_oim_options_give_the_reference_loss(case, kwargs):
    oim = _oim(case, **kwargs)
    loss = oim(torch.tensor(LOSSES["features"]), torch.tensor(LOSSES["pids"]))
    assert loss.item() == pytest.approx(LOSSES[case]["loss"], rel=1e-5)
    assert torch.allclose(oim.lookup_table, torch.tensor(LOSSES[case]["lookup_table_after"]), atol=1e-6)
    assert torch.allclose(oim.unlabeled_queue, torch.tensor(LOSSES[case]["queue_after"]), atol=1e-6)


def test_default_oim_options_differ_from_the_reference():
    """The defaults (one temperature, mean over labeled boxes) give another number: the options matter."""
    oim = _oim("alignps_prw", temperature=15.0, renormalize=True)
    loss = oim(torch.tensor(LOSSES["features"]), torch.tensor(LOSSES["pids"]))
    assert abs(loss.item() - LOSSES["alignps_prw"]["loss"]) > 0.1


@pytest.mark.parametrize("beta,matches", [(1.0, True), (0.0, False)])
def test_nae_smooth_l1_gives_nae4ps_box_loss(monkeypatch, beta, matches):
    """NAE4PS's box loss: smooth L1 (beta 1) summed over foreground / sampled boxes, x 10, on
    constant deltas against zero targets (proposals equal to their ground truth)."""
    ref = LOSSES["nae_box"]
    torch.manual_seed(0)
    model = build_model(tiny_nae_cfg("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", beta, "MODEL.NAE.BOX_REG_LOSS_WEIGHT", 10.0))
    heads = model.branches["NAEBranch"].roi_heads.train()
    n, n_fg = ref["num_sampled"], ref["num_foreground"]
    boxes = torch.tensor([[10.0 + 4 * i, 12, 40 + 4 * i, 70] for i in range(n)])
    sampled = Instances((96, 128))
    sampled.proposal_boxes = Boxes(boxes)
    sampled.gt_boxes = Boxes(boxes.clone())
    sampled.gt_classes = torch.tensor([0] * n_fg + [1] * (n - n_fg))
    sampled.gt_pids = torch.full((n,), -1)
    dim = heads.embedding.dim if hasattr(heads.embedding, "dim") else 32
    delta = torch.tensor(ref["delta"])
    monkeypatch.setattr(heads, "label_and_sample_proposals", lambda proposals, targets: [sampled])
    monkeypatch.setattr(heads, "_heads", lambda features, b: (torch.randn(n, dim), torch.zeros(n), delta.repeat(n, 1)))
    with EventStorage():
        loss = heads.losses({}, [sampled], [sampled])["loss_nae_box"]
    assert (loss.item() == pytest.approx(ref["loss_x10"], rel=1e-6)) is matches
