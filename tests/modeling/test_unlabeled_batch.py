"""A batch without a labeled person: both OIM losses are exactly 0 (not NaN as in the references)
and every other loss stays finite, so one such batch neither stops a run nor moves a weight
through re-id (docs/fidelity.md, "A batch without a labeled person")."""
import os

import torch
import torch.nn.functional as F

import galw
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from alignps_helpers import SYNTH_NUM_PIDS, synthetic_batch
from conftest import CONFIG_DIR, ROI_ALIGNPS_TASKS


def _model():
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, "alignps", "roi_alignps_R18_synth_cpu.yaml"))
    cfg.merge_from_list([
        "DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.OIM.NUM_LABELED", SYNTH_NUM_PIDS,
        "MODEL.NAE.EMBEDDING_DIM", 16, "MODEL.OIM.QUEUE_SIZE", 16,
        "MODEL.ALIGNPS.FPN_CHANNELS", 32, "MODEL.ALIGNPS.NUM_CONVS", 1, "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 16,
    ])
    torch.manual_seed(0)
    return build_model(cfg).train()


def test_the_references_formula_is_nan_on_such_a_batch():
    """NAE4PS lib/loss/oim.py:145, SeqNet models/oim.py:71 and ROI-AlignPS oim_nae_new.py:71 take
    cross_entropy(..., ignore_index) over the boxes; with none labeled it averages over nothing."""
    logits = torch.randn(3, 5)
    assert torch.isnan(F.cross_entropy(logits, torch.full((3,), -1), ignore_index=-1))
    assert torch.isnan(F.nll_loss(logits.log_softmax(1), torch.full((3,), -1), ignore_index=-1))  # AlignPS's focal OIM


def test_roi_alignps_losses_on_a_batch_without_labeled_people():
    model = _model()
    batch = synthetic_batch()
    for item in batch:
        item["instances"].gt_pids = torch.full_like(item["instances"].gt_pids, -1)
    with EventStorage():
        losses = model(batch)
    assert set(losses) == set(ROI_ALIGNPS_TASKS)
    assert losses["loss_nae_oim"].item() == 0.0 and losses["loss_aps_oim"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values()), {k: v.item() for k, v in losses.items()}
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
