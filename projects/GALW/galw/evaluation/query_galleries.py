"""Each query's gallery under one search protocol, handed out as flat index arrays per batch of queries.

A batch is what ``search_metrics.GalleryLayout`` and ``evaluate_layout`` take: the gallery images
of every query one after another (gallery order), and the positive entries (list position and the
person's box) of each. CUHK-SYSU protocols are read from a ``galw.data.protocol_table.ProtocolTable``
(index arrays, no per-entry Python objects); PRW's galleries follow from the gallery records.
"""
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..data.protocol_table import ProtocolTable, concatenated_ranges

logger = logging.getLogger(__name__)


@dataclass
class GalleryBatch:
    """The galleries of ``queries`` (those with at least one positive entry; ``skipped`` have none)."""

    queries: np.ndarray  # [Q] query record indices
    images: np.ndarray  # [pairs] gallery image indices, query after query, in gallery order
    n_img: np.ndarray  # [Q] gallery length per query
    pos_query: np.ndarray  # [P] index into queries
    pos_list: np.ndarray  # [P] list position of the positive image in its query's gallery
    pos_box: np.ndarray  # [P, 4] the query person's box in that image
    skipped: list  # query record indices without any positive entry
    duplicates: int = 0  # repeated images of a query's list, skipped

    def keep_pairs(self, keep):
        """This batch with only the (query, gallery image) pairs where ``keep`` [pairs] holds; every
        positive pair must be kept. The kept images stay in gallery order."""
        q_of = np.repeat(np.arange(len(self.n_img)), self.n_img)
        pair = (np.cumsum(self.n_img) - self.n_img)[self.pos_query] + self.pos_list
        if not keep[pair].all():
            raise ValueError("keep_pairs would drop a positive gallery entry")
        n_img = np.bincount(q_of[keep], minlength=len(self.n_img))
        new_pos = np.cumsum(keep) - 1
        pos_list = new_pos[pair] - (np.cumsum(n_img) - n_img)[self.pos_query]
        return GalleryBatch(self.queries, self.images[keep], n_img, self.pos_query, pos_list, self.pos_box,
                            self.skipped, self.duplicates)


def _batch(queries, images, n_img, pos_query, pos_list, pos_box, duplicates=0):
    """A GalleryBatch without the queries that have no positive entry."""
    has = np.bincount(pos_query, minlength=len(queries)) > 0
    if has.all():
        return GalleryBatch(queries, images, n_img, pos_query, pos_list, pos_box, [], duplicates)
    keep = np.flatnonzero(has)
    new_q = np.cumsum(has) - 1
    pair_start = np.cumsum(n_img) - n_img
    return GalleryBatch(queries[keep], images[concatenated_ranges(pair_start[keep], n_img[keep])], n_img[keep],
                        new_q[pos_query], pos_list, pos_box, queries[~has].tolist(), duplicates)


def duplicate_rows_by_sort(counts, images, n_gallery):
    """Rows whose consecutive ``counts[r]`` entries of ``images`` repeat an image: equal neighbours
    among the sorted (row, image) keys."""
    key = np.repeat(np.arange(len(counts), dtype=np.int64), counts) * n_gallery + images
    key.sort()
    return set((key[1:][key[1:] == key[:-1]] // n_gallery).tolist())


def duplicate_rows_by_count(counts, images, n_gallery, rows_per_chunk=256):
    """``duplicate_rows_by_sort`` by one bincount over (row, image) per chunk of rows."""
    starts, out = np.cumsum(counts) - counts, []
    for a in range(0, len(counts), rows_per_chunk):
        rows = np.arange(a, min(a + rows_per_chunk, len(counts)))
        key = np.repeat(rows - a, counts[rows]) * n_gallery + images[concatenated_ranges(starts[rows], counts[rows])]
        hits = np.bincount(key, minlength=len(rows) * n_gallery).reshape(len(rows), -1)
        out.extend((rows[(hits > 1).any(axis=1)]).tolist())
    return set(out)


class CuhkQueryGalleries:
    """A CUHK-SYSU protocol (any sequence of documented entries, or a ``ProtocolTable``).

    ``whole_gallery``: after the listed images, every other gallery image in record order (the
    whole-gallery protocol built on TestG50's lists). Repeated images of one query's list are
    skipped (the first entry kept) and counted in ``duplicates``.
    """

    def __init__(self, entries, gallery_index, query_set, num_queries, name, whole_gallery=False):
        table = entries.table() if hasattr(entries, "table") else ProtocolTable.from_entries(entries, name)
        self.name, self._whole, self._n_gallery = name, whole_gallery, len(gallery_index)
        lut = np.array([gallery_index.get(n, -1) for n in table.images.tolist()], dtype=np.int64)
        if (lut < 0).any():
            raise ValueError(f"gallery_protocols['{name}'] names image {table.images[np.argmax(lut < 0)]} that "
                             "is not in the gallery.")
        qidx = table.query_index
        seen = np.bincount(qidx[(qidx >= 0) & (qidx < num_queries)], minlength=num_queries)
        if (seen > 1).any():
            raise ValueError(f"gallery_protocols['{name}'] lists query {int(np.argmax(seen > 1))} twice.")
        bad = (qidx < 0) | (qidx >= num_queries)
        if bad.any():
            raise ValueError(f"gallery_protocols['{name}'] names query {int(qidx[bad][0])}, outside '{query_set}' "
                             f"({num_queries} queries).")
        self.queries = np.sort(qidx)
        self._row = np.full(num_queries, -1, dtype=np.int64)
        self._row[qidx] = np.arange(len(qidx))
        self._table = table
        self._images = lut[table.image_index]
        self._box_of = np.cumsum(table.has_box) - 1
        self._dup_rows = self._rows_with_duplicates()

    def _rows_with_duplicates(self):
        """Rows (queries) whose list repeats an image: by sorting when the lists are short (TestG100:
        290k entries), else by counting (TestG4000: 11.6M entries, where sorting costs more than
        counting over rows x gallery images)."""
        entries = int(self._table.counts.sum())
        by_sort = entries * max(1, int(np.log2(entries + 1))) < len(self._table) * self._n_gallery
        return (duplicate_rows_by_sort if by_sort else duplicate_rows_by_count)(
            self._table.counts, self._images, self._n_gallery)

    def mean_gallery_length(self):
        return self._n_gallery if self._whole else float(self._table.counts.mean()) if len(self._table) else 0.0

    def batch(self, queries):
        t = self._table
        queries = np.asarray(queries, dtype=np.int64)
        rows = self._row[queries]
        entries = concatenated_ranges(t.starts[rows], t.counts[rows])
        n_img = t.counts[rows].copy()
        q_of = np.repeat(np.arange(len(rows)), n_img)
        dup = [i for i, r in enumerate(rows.tolist()) if r in self._dup_rows]
        duplicates = 0
        if dup:
            keep = np.ones(len(entries), dtype=bool)
            starts = np.cumsum(n_img) - n_img
            for i in dup:
                seg = slice(starts[i], starts[i] + n_img[i])
                _, first = np.unique(self._images[entries[seg]], return_index=True)
                k = np.zeros(n_img[i], dtype=bool)
                k[first] = True
                keep[seg] = k
                duplicates += int(n_img[i] - len(first))
            entries, q_of = entries[keep], q_of[keep]
            n_img = np.bincount(q_of, minlength=len(rows))
        images = self._images[entries]
        pos = np.flatnonzero(t.has_box[entries])
        pos_query = q_of[pos]
        pos_list = pos - (np.cumsum(n_img) - n_img)[pos_query]
        pos_box = t.boxes[self._box_of[entries[pos]]]
        if self._whole:
            images, n_img, pos_list = self._append_rest(images, n_img, pos_query, pos_list)
        return _batch(queries, images, n_img, pos_query, pos_list, pos_box, duplicates)

    def _append_rest(self, images, n_img, pos_query, pos_list):
        """Each query's list followed by every gallery image not in it, in record order."""
        nq, n = len(n_img), self._n_gallery
        q_of = np.repeat(np.arange(nq), n_img)
        rest = np.ones((nq, n), dtype=bool)
        rest[q_of, images] = False
        rq, rimg = np.nonzero(rest)
        n_rest = np.bincount(rq, minlength=nq)
        total = n_img + n_rest
        start = np.cumsum(total) - total
        out = np.empty(int(total.sum()), dtype=np.int64)
        out[start[q_of] + (np.arange(len(images)) - (np.cumsum(n_img) - n_img)[q_of])] = images
        out[start[rq] + n_img[rq] + (np.arange(len(rimg)) - (np.cumsum(n_rest) - n_rest)[rq])] = rimg
        return out, total, pos_list


def cuhk_query_galleries(gallery_protocols, names, default, gallery_index, query_set, num_queries):
    """name -> ``CuhkQueryGalleries`` of the CUHK-SYSU protocols ``names`` found in the metadata's
    ``gallery_protocols`` (WholeGallery is built on TestG50's lists). A protocol that is absent, or
    whose file is missing, is logged and left out, except ``default``, whose missing file raises."""
    protocols = {}
    for name in dict.fromkeys([default, *names]):
        source = "TestG50" if name == "WholeGallery" else name
        if source not in gallery_protocols:
            logger.warning(f"CUHK-SYSU protocol {name} is not in the gallery metadata; not reported.")
            continue
        try:  # galw.data parses a protocol file on first access
            protocols[name] = CuhkQueryGalleries(gallery_protocols[source], gallery_index, query_set, num_queries,
                                                 source, name == "WholeGallery")
        except FileNotFoundError as e:
            if name == default:
                raise
            logger.warning(f"CUHK-SYSU protocol {name} skipped: {e}")
    return protocols


class PrwQueryGalleries:
    """PRW: each query's gallery is every other gallery frame ("standard"), the frames of the other
    cameras ("multi_view") or the other frames of its camera ("same_camera"), in record order."""

    def __init__(self, gallery_records, query_records, gallery_index, mode):
        self.name = mode
        self._mode, self._queries, self._gallery_index = mode, query_records, gallery_index
        self._cams = np.array([int(r.get("camera_id", -1)) for r in gallery_records], dtype=np.int64)
        self._by_pid = {}
        for i, r in enumerate(gallery_records):
            for a in r.get("annotations", []):
                pid = int(a["person_id"])
                if pid >= 0 and i not in self._by_pid.setdefault(pid, {}):
                    self._by_pid[pid][i] = np.asarray(a["bbox"], dtype=np.float64)
        self.queries = np.arange(len(query_records), dtype=np.int64)

    def mean_gallery_length(self):
        return len(self._cams)

    def _one(self, qi):
        q = self._queries[qi]
        cams, mode = self._cams, self._mode
        qimg = self._gallery_index.get(os.path.basename(q["file_name"]), -1)
        pid, cam = int(q["query"]["person_id"]), int(q.get("camera_id", -1))
        if mode != "standard" and cam < 0:
            raise ValueError(f"PRW {mode} needs camera_id; query {qi} ({q['file_name']}) has none.")
        keep = np.ones(len(cams), dtype=bool)
        if qimg >= 0:
            keep[qimg] = False
        if mode == "multi_view":
            keep &= cams != cam
        elif mode == "same_camera":
            keep &= cams == cam
        imgs = np.flatnonzero(keep)
        pos = sorted(((img, box) for img, box in self._by_pid.get(pid, {}).items() if keep[img]), key=lambda p: p[0])
        return imgs, [int(np.searchsorted(imgs, img)) for img, _ in pos], [box for _, box in pos]

    def batch(self, queries):
        queries = np.asarray(queries, dtype=np.int64)
        parts = [self._one(qi) for qi in queries.tolist()]
        images = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        n_img = np.array([len(p[0]) for p in parts], dtype=np.int64)
        pos_query = np.array([i for i, p in enumerate(parts) for _ in p[1]], dtype=np.int64)
        pos_list = np.array([j for p in parts for j in p[1]], dtype=np.int64)
        pos_box = np.array([b for p in parts for b in p[2]], dtype=np.float64).reshape(-1, 4)
        return _batch(queries, images, n_img, pos_query, pos_list, pos_box)
