"""Run the two passes of person-search evaluation (gallery, then queries) and evaluate once."""
import logging

from detectron2.evaluation import DatasetEvaluator, inference_on_dataset

logger = logging.getLogger(__name__)


class _ProcessOnly(DatasetEvaluator):
    """Forwards ``process`` so ``inference_on_dataset`` neither resets nor evaluates between passes."""

    def __init__(self, evaluator):
        self._evaluator = evaluator

    def process(self, inputs, outputs):
        self._evaluator.process(inputs, outputs)

    def evaluate(self):
        return None


def inference_person_search(model, gallery_loader, query_loader, evaluator):
    """Gallery pass, query pass (both with ``inference_on_dataset``), then ``evaluator.evaluate()``.

    Returns the evaluator's results ({} on non-main processes), like ``inference_on_dataset``.
    """
    evaluator.reset()
    forward = _ProcessOnly(evaluator)
    logger.info("Person-search evaluation: gallery pass")
    inference_on_dataset(model, gallery_loader, forward)
    logger.info("Person-search evaluation: query pass")
    inference_on_dataset(model, query_loader, forward)
    results = evaluator.evaluate()
    return {} if results is None else results
