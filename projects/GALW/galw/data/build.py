"""Train/test data loaders for person search: the resumable train loader and detectron2's test
loader, with the person-search mapper."""
import logging

from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
import detectron2.utils.comm as comm

from .mapper import PersonSearchDatasetMapper
from .resumable_loader import ResumableTrainLoader

__all__ = ["build_person_search_train_loader", "build_person_search_test_loader", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


def build_resumable_train_loader(cfg, mapper):
    """Infinite training loader over ``cfg.DATASETS.TRAIN`` whose batch i depends only on (seed, i)
    (see :mod:`galw.data.resumable_loader`); seed = SEED, or a seed shared by all processes when
    SEED < 0. Samplers other than TrainingSampler get detectron2's loader, which restarts its order
    on resume (logged)."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning(
            "DATALOADER.SAMPLER_TRAIN is %s: detectron2's loader, whose data order restarts on --resume",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
        return build_detection_train_loader(cfg, mapper=mapper)
    records = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    return ResumableTrainLoader(
        records,
        mapper,
        cfg.SOLVER.IMS_PER_BATCH,
        seed,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_person_search_train_loader(cfg):
    """Infinite, resumable training loader over ``cfg.DATASETS.TRAIN`` (multi-scale resize + flip)."""
    return build_resumable_train_loader(cfg, PersonSearchDatasetMapper(cfg, True))


def build_person_search_test_loader(cfg, dataset_name, oracle_boxes=False):
    """Inference loader for one gallery or query dataset (test-time resize, batch size 1).

    ``oracle_boxes``: gallery inputs also carry their GT boxes (``oracle_instances``) for the GT-box oracle.
    """
    mapper = PersonSearchDatasetMapper(cfg, False, oracle_boxes=oracle_boxes)
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
