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
    """Person-search data: dataset roots, synthetic data, the mapper's augmentation."""


def _add_evaluation_config(cfg):
    """TEST.PERSON_SEARCH: the evaluation protocol options (standard by default)."""


def _add_person_search_config(cfg):
    """MODEL.PERSON_SEARCH: the meta-architecture (branches, which detects, which embeds)."""


def _add_nae_config(cfg):
    """The NAE branch (RPN, res5 ROI head, norm-aware embedding) and OIM."""


def _add_alignps_config(cfg):
    """The anchor-free AlignPS branch (AFA FPN, FCOS head, dense re-id)."""


def _add_attribute_config(cfg):
    """The attribute branch (ALM)."""
    cfg.MODEL.ATTRIBUTE = CN()
    # Number of binary attributes; 0 = len(attribute_names) of DATASETS.TRAIN[0]'s metadata.
    cfg.MODEL.ATTRIBUTE.NUM_ATTRIBUTES = 0
    # Shared backbone levels whose box crops form the attribute pyramid (any order; sorted by stride).
    cfg.MODEL.ATTRIBUTE.IN_FEATURES = ["res3", "res4"]
    # Side of the ROIAlign crop taken from every level (32 in the paper).
    cfg.MODEL.ATTRIBUTE.POOLER_RESOLUTION = 32
    # Channels of each level's 1x1 lateral conv; level i of L then has CONV_DIM * (L - i) channels.
    cfg.MODEL.ATTRIBUTE.CONV_DIM = 256
    # Channel reduction of the squeeze-and-excitation gate in every ALM (16 in Tang et al.).
    cfg.MODEL.ATTRIBUTE.SE_REDUCTION = 16
