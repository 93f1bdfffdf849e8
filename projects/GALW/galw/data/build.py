"""Train/test data loaders for person search: detectron2's loaders with the person-search mapper."""
from detectron2.data import build_detection_test_loader, build_detection_train_loader

from .mapper import PersonSearchDatasetMapper

__all__ = ["build_person_search_train_loader", "build_person_search_test_loader"]


def build_person_search_train_loader(cfg):
    """Infinite training loader over ``cfg.DATASETS.TRAIN`` (multi-scale resize + flip)."""
    return build_detection_train_loader(cfg, mapper=PersonSearchDatasetMapper(cfg, True))


def build_person_search_test_loader(cfg, dataset_name, oracle_boxes=False):
    """Inference loader for one gallery or query dataset (test-time resize, batch size 1).

    ``oracle_boxes``: gallery inputs also carry their GT boxes (``oracle_instances``) for the GT-box oracle.
    """
    mapper = PersonSearchDatasetMapper(cfg, False, oracle_boxes=oracle_boxes)
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
