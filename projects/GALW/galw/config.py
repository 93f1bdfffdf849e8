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
    cfg.MODEL.PERSON_SEARCH = CN()
    # Branches built on the shared backbone, by PS_BRANCH_REGISTRY name (each owns its res5).
    cfg.MODEL.PERSON_SEARCH.BRANCHES = ["NAEBranch"]
    # Branch whose detect() gives the boxes and scores at inference.
    cfg.MODEL.PERSON_SEARCH.DETECTOR = "NAEBranch"
    # Branch whose embed() gives the re-id embeddings of those boxes and of query boxes.
    cfg.MODEL.PERSON_SEARCH.EMBEDDER = "NAEBranch"
    # Padded batch size divisible by this (32 as the reference's Pad(size_divisor=32)).
    cfg.MODEL.PERSON_SEARCH.SIZE_DIVISIBILITY = 32
    # ImageNet ResNet checkpoint loaded into the trunk and every branch's res5 at build time
    # (detectron2, Caffe2-Detectron or torchvision naming; see docs/models.md); "" = random init.
    cfg.MODEL.PERSON_SEARCH.PRETRAINED = ""


def _add_nae_config(cfg):
    """The NAE branch (RPN, res5 ROI head, norm-aware embedding) and OIM.

    The NAE branch also reads detectron2's own MODEL.RPN.*, MODEL.ANCHOR_GENERATOR.*,
    MODEL.ROI_HEADS.* (IN_FEATURES, sampling, test thresholds) and MODEL.ROI_BOX_HEAD.*
    (POOLER_RESOLUTION, POOLER_SAMPLING_RATIO, POOLER_TYPE, BBOX_REG_WEIGHTS).
    """
    cfg.MODEL.NAE = CN()
    # Dimension of the norm-aware embedding (half projected from pooled res4, half from res5).
    cfg.MODEL.NAE.EMBEDDING_DIM = 256
    # Weight of the ROI box L1 loss (10 in the ROI-AlignPS reference).
    cfg.MODEL.NAE.BOX_REG_LOSS_WEIGHT = 10.0
    cfg.MODEL.OIM = CN()
    # Labeled identities in the lookup table; 0 = the train dataset metadata's num_pids.
    cfg.MODEL.OIM.NUM_LABELED = 0
    # Length of the circular queue of unlabeled features (5000 CUHK-SYSU, 500 PRW).
    cfg.MODEL.OIM.QUEUE_SIZE = 5000
    # Lookup-table update v <- m v + (1 - m) x, then renormalised.
    cfg.MODEL.OIM.MOMENTUM = 0.5
    # Scale of the cosine similarities before the softmax.
    cfg.MODEL.OIM.TEMPERATURE = 30.0


def _add_alignps_config(cfg):
    """The anchor-free AlignPS branch (AFA FPN, FCOS head, dense re-id)."""


def _add_attribute_config(cfg):
    """The attribute branch (ALM)."""
