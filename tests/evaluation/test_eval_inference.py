"""inference_person_search: gallery pass, query pass, one evaluation, through a contract-following model."""
import pytest
import torch
from torch import nn

import galw  # noqa: F401
from galw.evaluation import PersonSearchEvaluator, inference_person_search

import eval_helpers as H


class FakePersonSearchModel(nn.Module):
    """Follows the eval contract: gallery -> {"instances"}, query -> {"query_embedding", "instances"}."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs  # file_name -> (gallery output, query embedding or None)
        self.calls = []

    def forward(self, batched_inputs):
        assert not self.training, "evaluation must run the model in eval mode"
        results = []
        for inp in batched_inputs:
            self.calls.append("query" if "query_instances" in inp else "gallery")
            if "query_instances" in inp:
                results.append({"query_embedding": torch.tensor(H.QUERY_EMB)})
            else:
                results.append(self.outputs[inp["file_name"]])
        return results


def test_two_passes_feed_one_evaluation():
    gallery, queries, protocols, dets = H.cuhk_scene()
    name = H.register("cuhk_sysu", gallery, queries, protocols)
    ios = H.cuhk_ios(gallery, queries, dets)
    model = FakePersonSearchModel({inp["file_name"]: out for inp, out in ios[: len(gallery)]})
    model.train()
    gallery_loader = [[inp] for inp, _ in ios[:4]] + [[inp for inp, _ in ios[4 : len(gallery)]]]  # batch of 2
    query_loader = [[inp] for inp, _ in ios[len(gallery):]]
    evaluator = PersonSearchEvaluator(name, cuhk_protocols=())
    results = inference_person_search(model, gallery_loader, query_loader, evaluator)
    assert model.calls == ["gallery"] * len(gallery) + ["query"] * len(queries)
    assert model.training  # inference_context restores the mode
    assert results["search"]["mAP"] == pytest.approx(100 * (0.475 + 1 / 3) / 2)
    assert results["detection"]["recall"] == pytest.approx(100 * 5 / 6)
