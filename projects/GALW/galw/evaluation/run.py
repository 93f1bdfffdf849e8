"""Evaluate a model on the person-search datasets a config names (used by Trainer.test)."""
import logging
from collections import OrderedDict

from detectron2.data import MetadataCatalog
from detectron2.evaluation import print_csv_format

from ..data import build_person_search_test_loader
from .evaluator import PersonSearchEvaluator
from .inference import inference_person_search

__all__ = ["is_person_search_dataset", "evaluate_person_search"]

logger = logging.getLogger(__name__)

PERSON_SEARCH_TYPES = ("cuhk_sysu", "prw")


def is_person_search_dataset(name: str) -> bool:
    """True for datasets registered with a person-search evaluator type (any split)."""
    return MetadataCatalog.get(name).get("evaluator_type", None) in PERSON_SEARCH_TYPES


def evaluate_person_search(cfg, model, gallery_name: str):
    """Gallery pass + query pass on ``gallery_name`` and its query set; returns the metrics."""
    meta = MetadataCatalog.get(gallery_name)
    if "query_set" not in meta.as_dict():
        raise ValueError(
            f"DATASETS.TEST entry '{gallery_name}' is a person-search dataset without a query set: "
            "name the gallery split (e.g. prw_gallery), not the train or query split."
        )
    gallery_loader = build_person_search_test_loader(
        cfg, gallery_name, oracle_boxes=cfg.TEST.PERSON_SEARCH.GT_BOX_ORACLE)
    query_loader = build_person_search_test_loader(cfg, meta.query_set)
    evaluator = PersonSearchEvaluator(cfg, gallery_name)
    results = inference_person_search(model, gallery_loader, query_loader, evaluator)
    if results:
        logger.info("Person-search results on %s (EMBEDDING %s):", gallery_name, cfg.TEST.PERSON_SEARCH.EMBEDDING)
        print_csv_format(OrderedDict(results))
    return results
