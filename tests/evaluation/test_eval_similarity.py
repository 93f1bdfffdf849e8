"""Similarities of queries to their own galleries: per-image products vs the full product, and the
gallery pairs that can rank (the filter applied to full-product protocols)."""
import numpy as np
import pytest

import galw  # noqa: F401
from galw.evaluation.protocol_search import image_maxima, pairs_that_can_rank
from galw.evaluation.gallery_similarity import full_product, layout_similarities, stable_argsort_indices
from galw.evaluation.gallery_store import SearchGalleryStore
from galw.evaluation.query_galleries import GalleryBatch, duplicate_rows_by_count, duplicate_rows_by_sort
from galw.evaluation.search_metrics import GalleryLayout, evaluate_layout


def random_store(rng, n_img, dim, max_dets=6):
    boxes, embs = [], []
    for _ in range(n_img):
        k = int(rng.integers(0, max_dets))
        xy, wh = rng.integers(0, 50, size=(k, 2)), rng.integers(5, 40, size=(k, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
        embs.append(rng.normal(size=(k, dim)))
    return SearchGalleryStore(boxes, embs, dim)


def random_batch(rng, store, nq):
    images, n_img, pq, plist, pbox = [], [], [], [], []
    for q in range(nq):
        g = rng.permutation(store.num_images)[: int(rng.integers(1, store.num_images + 1))]
        for lp, img in enumerate(g):
            if rng.random() < 0.3 or (lp == 0 and q % 2 == 0):
                if store.counts[img] and rng.random() < 0.8:
                    box = store.boxes[store.starts[img] + rng.integers(store.counts[img])] + rng.integers(-3, 4, 4)
                else:
                    box = np.array([0, 0, 10, 20.0])
                pq.append(q), plist.append(lp), pbox.append(np.asarray(box, np.float64))
        images.append(g)
        n_img.append(len(g))
    return GalleryBatch(np.arange(nq), np.concatenate(images), np.array(n_img), np.array(pq, np.int64),
                        np.array(plist, np.int64), np.array(pbox).reshape(-1, 4), [])


@pytest.mark.parametrize("seed", range(10))
def test_per_image_products_equal_the_full_product(seed):
    """Within float32 rounding on random embeddings; exactly on values whose products are exact."""
    rng = np.random.default_rng(seed)
    store = random_store(rng, int(rng.integers(1, 40)), 8)
    batch = random_batch(rng, store, int(rng.integers(1, 12)))
    q = rng.normal(size=(len(batch.n_img), 8)).astype(np.float32)
    layout = GalleryLayout.build(batch.images, batch.n_img, store)
    full = full_product(q, store)  # [detections, queries]
    assert full.shape == (len(store.embeddings), len(q))
    ref = full[layout.det_idx, layout.q_of]
    np.testing.assert_allclose(layout_similarities(q, layout, store, block_bytes=256), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(layout_similarities(q, layout, store, block_bytes=1), ref, rtol=0, atol=1e-5)
    exact_q = np.round(q * 4) / 4
    exact_store = SearchGalleryStore([store.boxes[store.starts[i]:store.starts[i] + store.counts[i]]
                                      for i in range(store.num_images)],
                                     [np.round(store.embeddings[store.starts[i]:store.starts[i] + store.counts[i]] * 4) / 4
                                      for i in range(store.num_images)], 8)
    np.testing.assert_array_equal(layout_similarities(exact_q, layout, exact_store),
                                  full_product(exact_q, exact_store)[layout.det_idx, layout.q_of])


@pytest.mark.parametrize("seed", range(30))
def test_pairs_that_cannot_rank_change_nothing(seed):
    """Dropping the gallery images whose best detection scores below the lowest matched positive
    leaves AP, counts and top-k of every query unchanged (ties and missed positives included)."""
    rng = np.random.default_rng(seed)
    store = random_store(rng, int(rng.integers(1, 30)), 4)
    batch = random_batch(rng, store, int(rng.integers(1, 8)))
    sims = np.round(rng.normal(size=(len(store.embeddings), len(batch.n_img))), 1).astype(np.float32)
    rows = np.arange(len(batch.n_img))
    keep = pairs_that_can_rank(batch, rows, sims, image_maxima(sims, store), store)
    small = batch.keep_pairs(keep)
    got, ref = [], []
    for b, out in ((batch, ref), (small, got)):
        layout = GalleryLayout.build(b.images, b.n_img, store)
        out.extend(evaluate_layout(sims[layout.det_idx, rows[layout.q_of]], layout, b.pos_query, b.pos_list,
                                   b.pos_box, store))
    for g, r in zip(got, ref):
        assert (g.ap, g.count_gt, g.count_tp, g.hits) == (r.ap, r.count_gt, r.count_tp, r.hits)
        np.testing.assert_array_equal(np.sort(g.positive_scores), np.sort(r.positive_scores))


def test_image_maxima():
    store = SearchGalleryStore([np.zeros((2, 4)), np.zeros((0, 4)), np.zeros((3, 4))],
                               [np.ones((2, 1)), np.ones((0, 1)), np.ones((3, 1))], 1)
    sims = np.array([[0.1, 0.5], [0.3, -1.0], [0.2, 0.0], [0.9, -0.5], [-0.4, 0.7]], np.float32)
    expected = np.array([[0.3, 0.5], [-np.inf, -np.inf], [0.9, 0.7]], np.float32)
    np.testing.assert_array_equal(image_maxima(sims, store), expected)


def test_the_filter_drops_images_below_the_lowest_matched_positive():
    """One query; its positive image 0 matches detection 0 (score 0.5). Image 1 (best 0.6) can rank
    above it, image 2 (best 0.4) cannot and is dropped; the positive stays at its new list position."""
    box = np.array([[0, 0, 10, 20]], np.float32)
    store = SearchGalleryStore([box, box, box], [np.ones((1, 1))] * 3, 1)
    batch = GalleryBatch(np.array([7]), np.array([2, 1, 0]), np.array([3]), np.array([0]), np.array([2]),
                         np.array([[0, 0, 10, 20.0]]), [])
    sims = np.array([[0.5], [0.6], [0.4]], np.float32)
    keep = pairs_that_can_rank(batch, np.array([0]), sims, image_maxima(sims, store), store)
    assert keep.tolist() == [False, True, True]
    small = batch.keep_pairs(keep)
    assert small.images.tolist() == [1, 0] and small.n_img.tolist() == [2] and small.pos_list.tolist() == [1]
    with pytest.raises(ValueError, match="positive"):
        batch.keep_pairs(np.array([True, True, False]))


@pytest.mark.parametrize("seed", range(5))
def test_threaded_blocks_give_the_single_thread_values_bit_for_bit(seed):
    rng = np.random.default_rng(100 + seed)
    store = random_store(rng, 60, 16)
    batch = random_batch(rng, store, 20)
    q = rng.normal(size=(len(batch.n_img), 16)).astype(np.float32)
    layout = GalleryLayout.build(batch.images, batch.n_img, store)
    one = layout_similarities(q, layout, store, block_bytes=512)
    for workers in (2, 3):
        np.testing.assert_array_equal(layout_similarities(q, layout, store, block_bytes=512, workers=workers), one)


@pytest.mark.parametrize("seed", range(10))
def test_duplicate_rows_by_sort_and_by_count_equal_a_plain_check(seed):
    rng = np.random.default_rng(seed)
    n_gallery = int(rng.integers(3, 30))
    counts = rng.integers(0, 12, size=int(rng.integers(1, 600)))
    images = rng.integers(0, n_gallery, size=int(counts.sum()))
    starts = np.cumsum(counts) - counts
    plain = {r for r in range(len(counts))
             if len(set(images[starts[r]:starts[r] + counts[r]].tolist())) < counts[r]}
    assert duplicate_rows_by_sort(counts, images, n_gallery) == plain
    assert duplicate_rows_by_count(counts, images, n_gallery) == plain
    assert duplicate_rows_by_count(counts, images, n_gallery, rows_per_chunk=7) == plain


@pytest.mark.parametrize("bound", [7, 65536, 70000])
def test_stable_argsort_indices_is_numpys_stable_argsort(bound):
    values = np.random.default_rng(bound).integers(0, bound, size=5000)
    values[:3] = bound - 1  # the largest index fits the 16-bit keys when bound <= 65536
    assert stable_argsort_indices(values, bound).tolist() == np.argsort(values, kind="stable").tolist()
