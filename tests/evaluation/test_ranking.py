"""One ranking for every result list: the evaluator's top-10 lists and galw.search's answers order a
gallery by ``search_metrics.rank_by_similarity`` (similarity descending, ties in gallery order)."""
import ast
import os

import numpy as np
import pytest
import torch

import galw  # noqa: F401
from conftest import ROOT
from galw.evaluation import search_metrics
from galw.evaluation.gallery_similarity import full_product
from galw.evaluation.gallery_store import SearchGalleryStore
from galw.evaluation.search_metrics import evaluate_queries, evaluate_query, rank_by_similarity
from galw.search import query as search_query

SEARCH_DIR = os.path.join(ROOT, "projects", "GALW", "galw", "search")


def _reference(y):
    """Every position by descending score, the earlier of two equal scores first."""
    return sorted(range(len(y)), key=lambda i: (-float(y[i]), i))


@pytest.mark.parametrize("seed", range(20))
def test_rank_by_similarity_orders_by_score_then_gallery_order(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.normal(size=int(rng.integers(0, 40))), 1).astype(np.float32)  # many ties
    want = _reference(y)
    assert rank_by_similarity(y).tolist() == want
    for k in (0, 1, 3, 10, len(y), len(y) + 5):
        assert rank_by_similarity(y, k).tolist() == want[:k]


def test_rank_by_similarity_by_hand():
    y = np.array([0.5, 0.9, 0.5, -1.0, 0.9], np.float32)
    assert rank_by_similarity(y).tolist() == [1, 4, 0, 2, 3]
    assert rank_by_similarity(y, 3).tolist() == [1, 4, 0]
    assert rank_by_similarity(np.zeros(0, np.float32), 5).tolist() == []


def _scene(seed):
    """Integer embeddings (exact products in numpy and torch, many equal similarities) over a few
    images (some without detections), integer queries; detection d has box [d, 0, d + 10, 20]."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, size=int(rng.integers(2, 12)))
    counts[-1] = max(int(counts[-1]), 1)
    embs = [rng.integers(-2, 3, size=(int(c), 4)).astype(np.float32) for c in counts]
    first = np.cumsum(counts) - counts
    boxes = [np.array([[d, 0.0, d + 10.0, 20.0] for d in range(f, f + c)], np.float32).reshape(-1, 4)
             for f, c in zip(first.tolist(), counts.tolist())]
    queries = rng.integers(-2, 3, size=(3, 4)).astype(np.float32)
    return counts, embs, boxes, queries


def _index(counts, embs, boxes):
    """A search index of the scene, as ``galw.search.build_index`` lays one out."""
    return {
        "images": [f"img{i}.png" for i in range(len(counts))],
        "frames": [None] * len(counts),
        "times": [None] * len(counts),
        "image_index": torch.as_tensor(np.repeat(np.arange(len(counts)), counts)),
        "boxes": torch.as_tensor(np.concatenate(boxes)),
        "scores": torch.ones(int(counts.sum())),
        "embeddings": torch.as_tensor(np.concatenate(embs)),
    }


@pytest.mark.parametrize("seed", range(20))
def test_search_and_evaluator_rank_a_gallery_alike(seed):
    """On the same similarity matrix (the whole store as every query's gallery), galw.search's
    ranked detections are the evaluator's top-10 lists (batched and query by query), ties included."""
    counts, embs, boxes, queries = _scene(seed)
    store = SearchGalleryStore(boxes, embs, 4)
    sims = full_product(queries, store).T  # [queries, detections]
    tops = evaluate_queries(sims, [np.arange(len(counts))] * len(queries), [[] for _ in queries], store,
                            want_top=True)
    index = _index(counts, embs, boxes)
    ties = 0
    for q, row, top in zip(queries, sims, tops):
        hits = search_query.rank(index, torch.as_tensor(q), 10)
        det_idx, offsets = store.detection_indices(np.arange(len(counts)))
        one_by_one = evaluate_query(row, det_idx, offsets, [], store, want_top=True).top
        evaluator_order = [t["det"] for t in top.top]
        assert [t["det"] for t in one_by_one] == evaluator_order
        assert evaluator_order == rank_by_similarity(row, 10).tolist() == _reference(row)[:10]
        assert [int(h["box"][0]) for h in hits] == evaluator_order
        assert [h["similarity"] for h in hits] == [t["similarity"] for t in top.top]
        assert [h["image"] for h in hits] == [f"img{store.image_of[d]}.png" for d in evaluator_order]
        ties += len(row) - len(np.unique(row))
    assert ties > 0 or seed > 0  # seed 0's scene has equal similarities, so the tie rule is exercised


def test_search_ranks_with_the_evaluators_function(monkeypatch):
    """galw.search.query imports ``rank_by_similarity`` from the evaluation (the same object), calls
    it for every answer, and no galw.search module sorts scores itself."""
    assert search_query.rank_by_similarity is search_metrics.rank_by_similarity
    calls = []

    def recording(y, k=None):
        calls.append((np.asarray(y).copy(), k))
        return search_metrics.rank_by_similarity(y, k)

    monkeypatch.setattr(search_query, "rank_by_similarity", recording)
    counts, embs, boxes, queries = _scene(0)
    hits = search_query.rank(_index(counts, embs, boxes), torch.as_tensor(queries[0]), 4)
    assert len(calls) == 1 and calls[0][1] == 4 and len(hits) == min(4, int(counts.sum()))
    for name in sorted(os.listdir(SEARCH_DIR)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(SEARCH_DIR, name)) as f:
            tree = ast.parse(f.read())
        sorts = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                 and n.attr in ("sort", "argsort", "topk", "lexsort", "partition", "argpartition")]
        assert not sorts, f"galw/search/{name} ranks with {sorts}; use search_metrics.rank_by_similarity"
    imports = [(n.module, a.name) for n in ast.walk(ast.parse(open(os.path.join(SEARCH_DIR, "query.py")).read()))
               if isinstance(n, ast.ImportFrom) for a in n.names]
    assert ("evaluation.search_metrics", "rank_by_similarity") in imports
