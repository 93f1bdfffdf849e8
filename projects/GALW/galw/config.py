"""``add_galw_config(cfg)``: every key this project reads, with its default."""
from detectron2.config import CfgNode as CN


def add_galw_config(cfg):
    """Add the GALW-PS keys to a detectron2 config (idempotent)."""
    if "GALW" in cfg.MODEL:
        return cfg
    _add_loss_weighting_config(cfg)
    _add_data_config(cfg)
    _add_evaluation_config(cfg)
    _add_model_config(cfg)
    return cfg


def _add_loss_weighting_config(cfg):
    """MODEL.GALW: loss weighting, probing and grouping (the GALW core)."""
    cfg.MODEL.GALW = CN()
    cfg.MODEL.GALW.ENABLED = False


def _add_data_config(cfg):
    """INPUT / DATASETS additions for person search."""


def _add_evaluation_config(cfg):
    """TEST.PERSON_SEARCH: the evaluation protocol options."""


def _add_model_config(cfg):
    """Person-search model keys (meta-architecture, branches, OIM)."""
