"""The values of projects/GALW/docs/fidelity.md, pinned through the resolved configs: a changed default
or yaml value fails here (and must be changed in the table with its reason)."""
import os

import pytest

import galw
from detectron2.config import get_cfg

from conftest import CONFIG_DIR, ROI_ALIGNPS_ATTR_TASKS, ROI_ALIGNPS_TASKS, ROOT

FIDELITY_MD = os.path.join(ROOT, "projects", "GALW", "docs", "fidelity.md")

PAPER_WEIGHTS = [1.0, 1.0, 10.0, 1.0, 10.0, 10.0, 10.0, 10.0, 10.0, 1.0]
SIX_SCALES = [[667, 400], [1000, 600], [1333, 800], [1500, 900], [1666, 1000], [2000, 1200]]

#: (config, key, resolved value) -- every row of docs/fidelity.md that a config carries.
PINNED = [
    # 1. search threshold and query feature of the models whose boxes come from AlignPS
    ("alignps/alignps_R50_cuhk.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.2),
    ("alignps/alignps_R50_prw.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.15),
    ("alignps/roi_alignps_R50_cuhk.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.2),
    ("alignps/roi_alignps_R50_prw.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.15),
    ("attr/roi_alignps_attr_R50_prw_galw.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.15),
    ("alignps/roi_alignps_R50_cuhk_galw.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.2),
    ("alignps/alignps_R50_prw.yaml", "TEST.PERSON_SEARCH.QUERY_FEATURE", "best_iou_detection"),
    ("alignps/roi_alignps_R50_prw_galw.yaml", "TEST.PERSON_SEARCH.QUERY_FEATURE", "best_iou_detection"),
    ("attr/roi_alignps_attr_R50_cuhk.yaml", "TEST.PERSON_SEARCH.QUERY_FEATURE", "best_iou_detection"),
    ("nae/nae_R50_prw.yaml", "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.5),
    ("nae/nae_R50_prw.yaml", "TEST.PERSON_SEARCH.QUERY_FEATURE", "gt_box"),
    # 12. ROI-AlignPS* searches with NAE's embedding of AlignPS's boxes
    ("alignps/roi_alignps_R50_prw.yaml", "TEST.PERSON_SEARCH.EMBEDDING", "embedder"),
    ("alignps/roi_alignps_R50_cuhk_galw.yaml", "TEST.PERSON_SEARCH.EMBEDDING", "embedder"),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.PERSON_SEARCH.EMBEDDER", "NAEBranch"),
    # 2. the ROI-AlignPS* baseline: Table 1's last row; the equal-weight variant has its own name
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.GALW.ENABLED", True),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.GALW.WEIGHTING", "manual"),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.GALW.GROUPING", "per_task"),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.GALW.MANUAL_WEIGHTS", PAPER_WEIGHTS),
    ("alignps/roi_alignps_R50_cuhk.yaml", "MODEL.GALW.MANUAL_WEIGHTS", PAPER_WEIGHTS),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.GALW.MANUAL_WEIGHTS", PAPER_WEIGHTS + [1.0]),
    ("alignps/roi_alignps_R50_prw_equal.yaml", "MODEL.GALW.ENABLED", False),
    ("alignps/roi_alignps_R50_cuhk_equal.yaml", "MODEL.GALW.ENABLED", False),
    ("alignps/alignps_R50_prw.yaml", "MODEL.GALW.ENABLED", False),  # AlignPS's baseline: all ones
    ("nae/nae_R50_prw.yaml", "MODEL.GALW.ENABLED", False),
    # 3. phase one trains the baseline; Gamma of the weighted losses
    ("alignps/roi_alignps_R50_prw_galw.yaml", "MODEL.GALW.PROBE_WEIGHTING", "manual"),
    ("attr/roi_alignps_attr_R50_cuhk_galw.yaml", "MODEL.GALW.PROBE_WEIGHTING", "manual"),
    ("alignps/alignps_R50_prw_galw.yaml", "MODEL.GALW.PROBE_WEIGHTING", "equal"),
    ("nae/nae_R50_cuhk_galw.yaml", "MODEL.GALW.PROBE_WEIGHTING", "equal"),
    ("alignps/roi_alignps_R50_prw_galw.yaml", "MODEL.GALW.GAMMA_LOSS", "weighted"),
    # 4. Eq. 9 read literally
    ("alignps/roi_alignps_R50_prw_galw.yaml", "MODEL.GALW.GROUP_LOG_SIGMA", "per_task"),
    ("alignps/roi_alignps_R50_prw_galw.yaml", "MODEL.GALW.LAMBDA", 1.0),
    ("alignps/roi_alignps_R50_prw_galw.yaml", "MODEL.GALW.MAX_GROUP_WEIGHT", 10.0),
    # 5. NAE ROI sampling
    ("nae/nae_R50_prw.yaml", "MODEL.ROI_HEADS.IOU_THRESHOLDS", [0.1, 0.5]),
    ("nae/nae_R50_prw.yaml", "MODEL.ROI_HEADS.IOU_LABELS", [0, -1, 1]),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ROI_HEADS.IOU_THRESHOLDS", [0.1, 0.5]),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ROI_HEADS.IOU_LABELS", [0, -1, 1]),
    ("nae/nae_R50_prw.yaml", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 128),
    ("nae/nae_R50_prw.yaml", "MODEL.ROI_HEADS.POSITIVE_FRACTION", 0.5),
    # 2. the task order Table 1's weights are indexed by (galw/modeling/tasks.py)
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.GALW.TASKS", ROI_ALIGNPS_TASKS),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.GALW.TASKS", ROI_ALIGNPS_ATTR_TASKS),
    # 13. ROIAlign as ROI-AlignPS (mmcv's aligned default, adaptive sampling) for every NAE head
    ("nae/nae_R50_prw.yaml", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2"),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2"),
    ("nae/nae_R50_prw.yaml", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 0),
    # 6. NAE box regressor init
    ("nae/nae_R50_prw.yaml", "MODEL.NAE.BOX_PREDICTOR_INIT_STD", 0.01),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.NAE.BOX_PREDICTOR_INIT_STD", 0.001),
    ("nae/nae_R50_prw.yaml", "MODEL.NAE.BOX_REG_LOSS_WEIGHT", 10.0),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.NAE.BOX_REG_LOSS_WEIGHT", 1.0),  # the 10 is Table 1's w3
    ("attr/roi_alignps_attr_R50_cuhk.yaml", "MODEL.NAE.BOX_REG_LOSS_WEIGHT", 1.0),
    # 7. gradient clipping: global norm 10 over all parameters
    ("nae/nae_R50_prw.yaml", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model"),
    ("alignps/alignps_R50_cuhk.yaml", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model"),
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 10.0),
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.CLIP_GRADIENTS.NORM_TYPE", 2.0),
    # 8. multi-scale training
    ("alignps/roi_alignps_R50_prw.yaml", "INPUT.PS.TRAIN_SCALE_MODE", "value"),
    ("alignps/roi_alignps_R50_prw.yaml", "INPUT.PS.TRAIN_SCALES", SIX_SCALES),
    ("nae/nae_R50_cuhk.yaml", "INPUT.PS.TRAIN_SCALE_MODE", "value"),
    ("alignps/alignps_R50_prw.yaml", "INPUT.PS.TRAIN_SCALE_MODE", "value"),
    ("alignps/roi_alignps_R50_prw.yaml", "INPUT.PS.HFLIP_PROB", 0.5),
    ("alignps/roi_alignps_R50_prw.yaml", "INPUT.PS.TEST_LONG_SIDE", 1500),
    ("alignps/roi_alignps_R50_prw.yaml", "INPUT.PS.TEST_SHORT_SIDE", 900),
    # 9. AlignPS head and re-id
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.OIM_TEMPERATURE", 10.0),
    ("alignps/alignps_R50_prw.yaml", "MODEL.ALIGNPS.OIM_TEMPERATURE", 15.0),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.OIM_FOCAL_GAMMA", 2.0),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.OIM_RENORMALIZE", False),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.DCN_ON_LAST_CONV", True),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.DEFORM_OFFSET_INIT", "xavier"),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 500),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.OIM_MOMENTUM", 0.5),
    ("alignps/roi_alignps_R50_cuhk.yaml", "MODEL.ALIGNPS.OIM_MOMENTUM", 0.5),
    ("alignps/roi_alignps_R50_cuhk.yaml", "MODEL.ALIGNPS.OIM_QUEUE_SIZE", 5000),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.NUM_CONVS", 4),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.HEAD_NORM", "GN"),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.CENTER_SAMPLING_RADIUS", 1.5),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.NMS_THRESH_TEST", 0.5),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.05),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.ALIGNPS.TRIPLET_MARGIN", 0.3),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.OIM.TEMPERATURE", 30.0),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.OIM.QUEUE_SIZE", 500),
    ("alignps/roi_alignps_R50_cuhk.yaml", "MODEL.OIM.QUEUE_SIZE", 5000),
    # 10. NAE alone at test time: gallery embeddings times the detection score
    ("nae/nae_R50_prw.yaml", "MODEL.NAE.SCORE_WEIGHTED_EMBEDDINGS", True),
    # 11. ALM
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.ATTRIBUTE.POOLING", "avg"),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.ATTRIBUTE.PADDING_MODE", "border"),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.ATTRIBUTE.LATERAL_RELU", False),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.ATTRIBUTE.IN_FEATURES", ["res2", "res3", "res4"]),
    ("attr/roi_alignps_attr_R50_cuhk_galw.yaml", "MODEL.ATTRIBUTE.IN_FEATURES", ["res2", "res3", "res4"]),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4"]),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.ATTRIBUTE.POOLER_RESOLUTION", 32),
    ("attr/roi_alignps_attr_R50_prw.yaml", "MODEL.ATTRIBUTE.SE_REDUCTION", 16),
    # schedule and optimiser (paper Sec. 4.1.3)
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.BASE_LR", 0.001),
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.WARMUP_ITERS", 300),
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.MOMENTUM", 0.9),
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.WEIGHT_DECAY", 0.0005),
    ("alignps/roi_alignps_R50_prw.yaml", "SOLVER.IMS_PER_BATCH", 5),
    ("alignps/roi_alignps_R50_prw.yaml", "MODEL.PERSON_SEARCH.SIZE_DIVISIBILITY", 32),
]


def _resolved(rel, key):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, rel))
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("rel,key,value", PINNED, ids=[f"{r}:{k}" for r, k, _ in PINNED])
def test_pinned_value(rel, key, value):
    got = _plain(_resolved(rel, key))
    if isinstance(value, float):
        assert got == pytest.approx(value), (rel, key)
    else:
        assert got == value, (rel, key)


def test_every_pinned_key_is_in_the_table():
    text = open(FIDELITY_MD).read()
    missing = sorted({key for _, key, _ in PINNED if key.split(".")[-1] not in text})
    assert not missing, f"docs/fidelity.md has no row for {missing}"


#: Keys the table's "ours" column names only as the other option, not as a default.
OPTION_ONLY_KEYS = {"TRAIN_LONG_SIDE_RANGE", "TRAIN_SHORT_SIDE_RANGE"}


def test_every_key_of_the_table_is_pinned():
    """The other direction: a config key the table gives a value for is pinned above."""
    import re

    pinned = {key.split(".")[-1] for _, key, _ in PINNED}
    named = set()
    for line in open(FIDELITY_MD).read().splitlines():
        cells = line.split("|")
        if line.startswith("| ") and len(cells) > 6:
            named |= {k.split(".")[-1] for k in re.findall(r"`([A-Z_]+(?:\.[A-Z_0-9]+)*)`", cells[5])}
    assert named, "docs/fidelity.md: no config keys found in the table's 'ours' column"
    assert sorted(named - pinned - OPTION_ONLY_KEYS) == []


def test_no_dangling_contracts_reference():
    """CONTRACTS.md does not exist; the loss-key table is docs/models.md's."""
    hits = []
    for top in ("projects", "tests", "tools", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith((".py", ".md", ".yaml")) and name != "test_fidelity.py":
                    path = os.path.join(dirpath, name)
                    if "CONTRACTS.md" in open(path, encoding="utf-8").read():
                        hits.append(os.path.relpath(path, ROOT))
    assert not hits, hits
