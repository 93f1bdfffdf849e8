"""``add_galw_config(cfg)``: every key this project reads, with its default.

One function per concept below, so each part of the project owns its keys.
"""
from detectron2.config import CfgNode as CN


def add_galw_config(cfg):
    """Add the GALW-PS keys to a detectron2 config (idempotent)."""
    if "GALW" in cfg.MODEL:
        return cfg
    _add_loss_weighting_config(cfg)
    _add_data_config(cfg)
    _add_evaluation_config(cfg)
    _add_person_search_config(cfg)
    _add_nae_config(cfg)
    _add_alignps_config(cfg)
    _add_attribute_config(cfg)
    return cfg


def _add_loss_weighting_config(cfg):
    """MODEL.GALW: loss weighting, gradient probing and task grouping (the GALW core)."""
    cfg.MODEL.GALW = CN()
    cfg.MODEL.GALW.ENABLED = False


def _add_data_config(cfg):
    """Person-search data: the mapper's multi-scale training resize, flip and test resize.

    Dataset roots come from $DETECTRON2_DATASETS (detectron2's convention), not from the config.
    """
    cfg.INPUT.PS = CN()
    # Training resize (paper): long-side bound drawn uniformly from this range ...
    cfg.INPUT.PS.TRAIN_LONG_SIDE_RANGE = (667, 2000)
    # ... and short-side bound from this one; the image is scaled (keeping its ratio) to fit both.
    cfg.INPUT.PS.TRAIN_SHORT_SIDE_RANGE = (400, 1200)
    # Probability of a horizontal flip during training (boxes, pids and attributes follow).
    cfg.INPUT.PS.HFLIP_PROB = 0.5
    # Test resize: the largest keep-ratio size with long side <= this ...
    cfg.INPUT.PS.TEST_LONG_SIDE = 1500
    # ... and short side <= this (1500x900 as in the paper).
    cfg.INPUT.PS.TEST_SHORT_SIDE = 900


def _add_evaluation_config(cfg):
    """TEST.PERSON_SEARCH: the evaluation protocol options (standard by default)."""
    cfg.TEST.PERSON_SEARCH = CN()
    # Gallery detections used for search need score >= this (AlignPS-style code: 0.2 CUHK, 0.15 PRW).
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.5
    # Detections scored for detection AP / recall.
    cfg.TEST.PERSON_SEARCH.DETECTION_SCORE_THRESH = 0.01
    # IoU for a detection to match a GT box (mutual argmax) in detection metrics.
    cfg.TEST.PERSON_SEARCH.DETECTION_IOU_THRESH = 0.5
    # Query feature: "gt_box" (embedding of the query box) or "best_iou_detection" (AlignPS, PSTR).
    cfg.TEST.PERSON_SEARCH.QUERY_FEATURE = "gt_box"
    # CUHK-SYSU gallery size reported as "search" (one of 50, 100, 500, 1000, 2000, 4000).
    cfg.TEST.PERSON_SEARCH.CUHK_GALLERY_SIZE = 100
    # Further CUHK-SYSU protocols, each reported as "search_<name>".
    cfg.TEST.PERSON_SEARCH.CUHK_PROTOCOLS = [
        "TestG50", "TestG100", "TestG500", "TestG1000", "TestG2000", "TestG4000",
        "Occlusion", "Resolution", "WholeGallery",
    ]
    # PRW: also report the multi-view (cross-camera) setting as "search_MultiView".
    cfg.TEST.PERSON_SEARCH.PRW_MULTI_VIEW = True
    # Queries per similarity matrix product (memory ~ batch x gallery detections x 4 bytes).
    cfg.TEST.PERSON_SEARCH.QUERY_BATCH_SIZE = 256
    # Probability threshold for attribute accuracy (mA).
    cfg.TEST.PERSON_SEARCH.ATTRIBUTE_THRESH = 0.5


def _add_person_search_config(cfg):
    """MODEL.PERSON_SEARCH: the meta-architecture (branches, which detects, which embeds)."""


def _add_nae_config(cfg):
    """The NAE branch (RPN, res5 ROI head, norm-aware embedding) and OIM."""


def _add_alignps_config(cfg):
    """The anchor-free AlignPS branch (AFA FPN, FCOS head, dense re-id)."""


def _add_attribute_config(cfg):
    """The attribute branch (ALM)."""
