"""Scoring the queries of every search protocol against their galleries: similarities, optional
CBGM re-scoring, then AP / top-k per query and the metrics of each protocol."""
import logging
import time

import numpy as np
import torch

from .cbgm import cbgm_rescore
from .gallery_similarity import full_product, layout_similarities, prefers_full_product
from .search_metrics import TOPK, GalleryLayout, SimilarityHistogram, evaluate_layout, evaluate_query, pick_positives

logger = logging.getLogger(__name__)

#: Gallery detections laid out per chunk of queries (memory vs the per-call overhead; same results).
LAYOUT_ENTRIES = 2_000_000
#: Mean gallery detections per query above which a protocol that needs every entry (the default one:
#: top-10 lists and histogram; CBGM) is scored query by query from the full product (same results):
#: measured, PRW's ~40k per query take half the time that way (one query's arrays fill the caches).
LARGE_GALLERY = 20000


def image_maxima(sims, store):
    """[images, queries] the highest similarity of each image's detections (-inf for an image without
    any): one in-place maximum per detection rank over the images that have that many, kept sorted
    by detection count so each step is a contiguous slice."""
    by_count = np.argsort(-store.counts, kind="stable")
    ranked, starts = store.counts[by_count], store.starts[by_count]
    ordered = np.full((store.num_images, sims.shape[1]), -np.inf, dtype=np.float32)
    for k in range(int(ranked.max(initial=0))):
        m = int(np.count_nonzero(ranked > k))
        np.maximum(ordered[:m], sims[starts[:m] + k], out=ordered[:m])
    out = np.empty_like(ordered)
    out[by_count] = ordered
    return out


def pairs_that_can_rank(batch, rows, sims, image_max, store):
    """[pairs] the gallery images that can matter for AP and top-k: the positive ones, and those with
    a detection scoring at least the query's lowest matched positive (picked as ``evaluate_layout``
    picks them); an entry below it is never counted (AP) or ranked above a positive (top-k)."""
    nq = len(batch.n_img)
    pair_start = np.cumsum(batch.n_img) - batch.n_img
    pair = pair_start[batch.pos_query] + batch.pos_list
    pimg = batch.images[pair]
    counts = store.counts[pimg]
    dets = np.repeat(store.starts[pimg] - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    groups = np.repeat(np.arange(len(pair)), counts)
    scores = sims[dets, rows[batch.pos_query][groups]]
    chosen = pick_positives(scores, store.boxes[dets], groups, batch.pos_box)
    hit = chosen >= 0
    floor = np.full(nq, np.inf, dtype=np.float32)
    np.minimum.at(floor, batch.pos_query[hit], scores[chosen[hit]])
    q_of = np.repeat(np.arange(nq), batch.n_img)
    keep = image_max[batch.images, rows[q_of]] >= floor[q_of]
    keep[pair] = True
    return keep


def query_chunks(queries, entries_per_query):
    """``queries`` in chunks whose gallery layouts hold about ``LAYOUT_ENTRIES`` detections."""
    size = max(1, int(LAYOUT_ENTRIES // max(entries_per_query, 1.0)))
    return [queries[i : i + size] for i in range(0, len(queries), size)]


def search_protocols(protocols, store, query_embs, default, *, query_contexts=None, cbgm_top=10, batch_size=256,
                     timings=None, cpu_timings=None, query_set="queries", dataset_name="gallery"):
    """Metrics of every protocol (name -> its query galleries).

    Small galleries are scored from per-image products (``layout_similarities``); large ones
    from rows of the full product, computed once per batch of queries and shared by all of
    them. The protocol named "CBGM" is re-scored with CBGM (``query_contexts``, its ``cbgm_top``
    most similar detections) before it is ranked. Returns name -> (metrics, {"results", "skipped"[,
    "similarity_histogram" for ``default``]}); wall and CPU seconds per stage are added to ``timings``
    and ``cpu_timings``; ``query_set`` and ``dataset_name`` name the data in errors and warnings.
    """
    timings = {} if timings is None else timings
    cpu_timings = {} if cpu_timings is None else cpu_timings
    queries = np.array(sorted(set().union(*[set(p.queries.tolist()) for p in protocols.values()])), np.int64)
    missing = [q for q in queries.tolist() if q not in query_embs]
    if missing:
        raise ValueError(
            f"{len(missing)} queries of '{query_set}' (e.g. {missing[:5]}) have no model output; "
            "run the query pass over all queries."
        )
    if "CBGM" in protocols:
        missing = [q for q in queries.tolist() if q not in (query_contexts or {})]
        if missing:
            raise ValueError(f"CBGM: {len(missing)} queries (e.g. {missing[:5]}) have no query-image detections; "
                             "the query outputs need 'instances'.")
    row_of = np.full(int(queries.max(initial=-1)) + 1, -1, dtype=np.int64)
    row_of[queries] = np.arange(len(queries))
    embs = np.stack([query_embs[q] for q in queries.tolist()]).astype(np.float32) if len(queries) else None
    per_query = {name: [] for name in protocols}
    skipped = {name: [] for name in protocols}
    duplicates = dict.fromkeys(protocols, 0)
    histogram = SimilarityHistogram()
    for key in ["similarity", *protocols]:
        timings.setdefault(key, 0.0)
        cpu_timings.setdefault(key, 0.0)
    dets_per_image = float(store.counts.mean()) if store.num_images else 0.0
    entries = {name: g.mean_gallery_length() * dets_per_image for name, g in protocols.items()}
    # One protocol with large galleries makes the full product worth computing; then all read it.
    any_large = any(prefers_full_product(e, len(store.embeddings)) for e in entries.values())
    full = list(protocols) if any_large else []

    def score(name, batch, layout, y):
        if name == "CBGM":
            ends = np.cumsum(np.bincount(layout.q_of, minlength=layout.num_queries)).tolist()
            for qi, a, b in zip(batch.queries.tolist(), [0, *ends[:-1]], ends):
                y[a:b] = cbgm_rescore(y[a:b], layout.det_idx[a:b], query_embs[qi], query_contexts[qi], store,
                                      cbgm_top)
        results = evaluate_layout(y, layout, batch.pos_query, batch.pos_list, batch.pos_box, store,
                                  want_top=name == default, histogram=histogram if name == default else None)
        per_query[name].extend(zip(batch.queries.tolist(), results))
        skipped[name].extend(batch.skipped)
        duplicates[name] += batch.duplicates

    def one_by_one(name, batch, sims, rows):  # sims: [queries, detections]
        pair_start = np.cumsum(batch.n_img) - batch.n_img
        for i, qi in enumerate(batch.queries.tolist()):
            imgs = batch.images[pair_start[i]:pair_start[i] + batch.n_img[i]]
            det_idx, offsets = store.detection_indices(imgs)
            row = sims[rows[i]]
            if name == "CBGM":
                row = row.copy()
                row[det_idx] = cbgm_rescore(row[det_idx], det_idx, query_embs[qi], query_contexts[qi], store,
                                            cbgm_top)
            mine = np.flatnonzero(batch.pos_query == i)
            pos = list(zip(batch.pos_list[mine].tolist(), imgs[batch.pos_list[mine]].tolist(), batch.pos_box[mine]))
            res = evaluate_query(row, det_idx, offsets, pos, store, want_top=name == default)
            if name == default:
                histogram.add(row[det_idx], res.positive_scores)
            per_query[name].append((qi, res))
        skipped[name].extend(batch.skipped)
        duplicates[name] += batch.duplicates

    for name, g in protocols.items():
        if name in full:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        for chunk in query_chunks(g.queries, entries[name]):
            batch = g.batch(chunk)
            layout = GalleryLayout.build(batch.images, batch.n_img, store)
            score(name, batch, layout, layout_similarities(embs[row_of[batch.queries]], layout, store,
                                                           workers=torch.get_num_threads()))
        timings[name] += time.perf_counter() - t0
        cpu_timings[name] += time.process_time() - c0
    for b in range(0, len(queries) if full else 0, batch_size):
        rows = np.arange(b, min(b + batch_size, len(queries)))
        t0, c0 = time.perf_counter(), time.process_time()
        sims = full_product(embs[rows], store)
        timings["similarity"] += time.perf_counter() - t0
        cpu_timings["similarity"] += time.process_time() - c0
        image_max = by_query = None
        for name in full:
            t0, c0 = time.perf_counter(), time.process_time()
            g = protocols[name]
            mine = queries[rows][np.isin(queries[rows], g.queries)]
            for chunk in query_chunks(mine, entries[name]):
                batch = g.batch(chunk)
                batch_rows = row_of[batch.queries] - b
                if name != default and name != "CBGM":  # no top-10 list, histogram or re-scoring
                    if image_max is None:
                        image_max = image_maxima(sims, store)
                    batch = batch.keep_pairs(pairs_that_can_rank(batch, batch_rows, sims, image_max, store))
                elif entries[name] > LARGE_GALLERY:
                    if by_query is None:
                        # one query's similarities contiguous; torch's transposing copy is ~2x numpy's
                        by_query = torch.from_numpy(sims).t().contiguous().numpy()
                    one_by_one(name, batch, by_query, batch_rows)
                    continue
                layout = GalleryLayout.build(batch.images, batch.n_img, store)
                y = sims[layout.det_idx, batch_rows[layout.q_of]]
                score(name, batch, layout, y)
            timings[name] += time.perf_counter() - t0
            cpu_timings[name] += time.process_time() - c0
    for name, d in duplicates.items():
        if d:
            logger.warning(f"CUHK-SYSU {name}: {d} duplicate gallery entries skipped.")
    out = {}
    for name in protocols:
        if skipped[name]:
            logger.warning(
                f"Person search {name} on {dataset_name}: {len(skipped[name])} queries have no positive "
                f"in their gallery and are left out of mAP/top-k (first: {skipped[name][:5]})."
            )
        if not per_query[name]:
            raise ValueError(f"Person search {name} on {dataset_name}: no query has a positive in its gallery.")
        aps = np.array([r.ap for _, r in per_query[name]])
        hits = np.array([r.hits for _, r in per_query[name]], dtype=np.float64)
        metrics = {"mAP": 100.0 * float(aps.mean())}
        for j, k in enumerate(TOPK):
            metrics[f"top{k}"] = 100.0 * float(hits[:, j].mean())
        out[name] = (metrics, {"results": per_query[name], "skipped": skipped[name]})
    if default in out:
        out[default][1]["similarity_histogram"] = histogram.as_dict()
    return out
