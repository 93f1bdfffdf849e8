"""Person-search evaluation: the standard search and detection protocols."""
from .colour_baseline import evaluate_colour_baseline
from .evaluator import PersonSearchEvaluator
from .inference import inference_person_search
from .run import evaluate_person_search, is_person_search_dataset

__all__ = [
    "PersonSearchEvaluator",
    "evaluate_colour_baseline",
    "evaluate_person_search",
    "inference_person_search",
    "is_person_search_dataset",
]
