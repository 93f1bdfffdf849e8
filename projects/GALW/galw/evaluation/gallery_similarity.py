"""Similarities of queries to the detections of their own galleries (a ``GalleryLayout``).

Two ways to float32 inner products: the full store x query product, worth it when the galleries
cover much of the store (TestG4000, the whole gallery, PRW) and then shared by every protocol of
the evaluation; or, when all galleries are small (TestG100 alone: ~650 of 45k detections per
query), one small product per gallery image with the queries that list it, ~1/70 of the work.
The two may differ in the last bit (BLAS sums in a shape-dependent order, as the full product's
own values already do between query batch sizes).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Layout entries per query above which the full product is cheaper than the per-image products,
#: as a fraction of the store's detections (measured on the real-scale benchmark).
FULL_PRODUCT_FRACTION = 0.25


def prefers_full_product(entries_per_query, num_store_detections):
    """Whether galleries of this mean size (detections per query) are scored from the full product."""
    return entries_per_query > FULL_PRODUCT_FRACTION * num_store_detections


def stable_argsort_indices(values, bound):
    """``np.argsort(values, kind="stable")`` of indices in ``[0, bound)``; as 16-bit keys when they
    fit, which numpy sorts by radix (about 5x faster than 64-bit keys)."""
    if bound <= np.iinfo(np.uint16).max + 1:
        values = np.asarray(values).astype(np.uint16)
    return np.argsort(values, kind="stable")


def full_product(query_embs, store):
    """[num store detections, Q] float32 similarities, detection-major: an image's detections are
    adjacent rows, so per-image maxima reduce whole rows at a time."""
    return store.embeddings @ np.asarray(query_embs, np.float32).T


def layout_similarities(query_embs, layout, store, block_bytes=8 << 20, workers=1):
    """[layout entries] similarity of each entry's query to its detection.

    Per gallery image, the queries that list it are multiplied with its detections in one small
    matrix product; the products of images with equally many detections run as one batched
    ``matmul`` (queries padded to the image with the most in its block; blocks hold images with
    similar query counts), in blocks of about ``block_bytes``. ``workers`` threads run the blocks
    (numpy's gathers and products release the GIL); blocks write disjoint entries and do not
    depend on the thread count, so neither do the values.
    """
    q = np.asarray(query_embs, np.float32)
    padding = len(q)  # the index of an all-zero row appended to the queries
    q = np.concatenate([q, np.zeros((1, q.shape[1]), np.float32)])
    y = np.empty(len(layout.det_idx), np.float32)
    pairs = np.flatnonzero(layout.counts)
    if len(pairs) == 0:
        return y
    pair_q = np.repeat(np.arange(layout.num_queries, dtype=np.int64), layout.n_img)[pairs]
    order = stable_argsort_indices(layout.images[pairs], store.num_images)
    pairs, pair_q = pairs[order], pair_q[order]
    images = layout.images[pairs]
    group_start = np.flatnonzero(np.concatenate([[True], images[1:] != images[:-1]]))
    group_size = np.diff(np.append(group_start, len(pairs)))
    group_image = images[group_start]
    rank = np.arange(len(pairs)) - np.repeat(group_start, group_size)  # a pair's place among its image's
    group_count = store.counts[group_image]
    dim = q.shape[1]
    blocks = []
    for c in np.unique(group_count).tolist():
        groups = np.flatnonzero(group_count == c)
        groups = groups[np.argsort(group_size[groups], kind="stable")]  # similar sizes per block: little padding
        per_group = max(1, block_bytes // (4 * dim * (int(group_size[groups].max()) + c)))
        blocks += [(c, groups[i:i + per_group]) for i in range(0, len(groups), per_group)]

    def run(block):
        c, g = block
        sizes = group_size[g]
        sel = np.repeat(group_start[g] - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        width = int(sizes.max())
        at = np.repeat(np.arange(len(g)) * width, sizes) + rank[sel]  # (image, place) in the padded block
        take = np.full(len(g) * width, padding, dtype=np.int64)
        take[at] = pair_q[sel]
        padded = q[take].reshape(len(g), width, dim)
        rows = store.starts[group_image[g]][:, None] + np.arange(c)
        dets = store.embeddings[rows].transpose(0, 2, 1)  # [n, dim, c]: a transposed operand BLAS takes as it is
        out = np.matmul(padded, dets)  # [n, queries, c]
        y[layout.img_start[pairs[sel]][:, None] + np.arange(c)] = out.reshape(-1, c)[at]

    if workers > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, blocks))
    else:
        for block in blocks:
            run(block)
    return y
