"""Person-search evaluation: the standard search and detection protocols."""
from .evaluator import PersonSearchEvaluator
from .inference import inference_person_search

__all__ = ["PersonSearchEvaluator", "inference_person_search"]
