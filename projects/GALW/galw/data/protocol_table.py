"""A CUHK-SYSU gallery protocol in columns: what the parse cache stores and the evaluator reads.

TestG4000 lists 11.6M (query, gallery image) entries; as Python dicts they take seconds to build
and to read back, as index arrays into a table of image names they take milliseconds. The
sequence interface still yields the documented entries ``{"query_index", "gallery": [{"image",
"bbox"}]}`` one query at a time, for code that wants them.
"""
from collections.abc import Sequence

import numpy as np

__all__ = ["COLUMNS", "ProtocolTable", "concatenated_ranges"]

#: name -> meaning of the arrays of a protocol (the keys of its parse-cache file).
COLUMNS = {
    "query_index": "[Q] int: the query record of each listed query, in protocol order",
    "counts": "[Q] int: gallery entries of each query",
    "images": "[U] str: the distinct gallery image basenames",
    "image_index": "[E] int: each gallery entry's image, an index into images (queries one after another)",
    "has_box": "[E] bool: the entry holds the query person (a positive image)",
    "boxes": "[P, 4] float: the person's [x1, y1, x2, y2] in each positive entry, in entry order",
}


def concatenated_ranges(starts, counts):
    """Concatenated ``arange(s, s + c)`` for every (s, c): the entries of several rows of a table."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets, counts) + np.arange(int(counts.sum()))


class ProtocolTable(Sequence):
    """The entries of one gallery protocol as arrays (see ``COLUMNS``); immutable once built."""

    def __init__(self, query_index, counts, images, image_index, has_box, boxes, name=""):
        self.name = name
        self.query_index = np.asarray(query_index, dtype=np.int64).reshape(-1)
        self.counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        self.images = np.asarray(images, dtype=str).reshape(-1)
        self.image_index = np.asarray(image_index, dtype=np.int64).reshape(-1)
        self.has_box = np.asarray(has_box, dtype=bool).reshape(-1)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        where = f"gallery protocol {name!r}" if name else "gallery protocol"
        if len(self.counts) != len(self.query_index) or (self.counts < 0).any():
            raise ValueError(f"{where}: counts {self.counts.shape} must be >= 0, one per query "
                             f"({len(self.query_index)}).")
        if int(self.counts.sum()) != len(self.image_index) or len(self.has_box) != len(self.image_index):
            raise ValueError(f"{where}: {len(self.image_index)} entries and {len(self.has_box)} has_box flags, "
                             f"but the counts sum to {int(self.counts.sum())}.")
        if int(self.has_box.sum()) != len(self.boxes):
            raise ValueError(f"{where}: {int(self.has_box.sum())} entries with a box, {len(self.boxes)} boxes.")
        if len(self.image_index) and not (0 <= self.image_index.min() and self.image_index.max() < len(self.images)):
            raise ValueError(f"{where}: image_index outside the {len(self.images)} image names.")
        self.starts = np.cumsum(self.counts) - self.counts
        self._box_starts = np.concatenate([[0], np.cumsum(self.has_box)])[self.starts]

    @classmethod
    def from_columns(cls, columns, name=""):
        """From the arrays of ``COLUMNS`` (a parse-cache value)."""
        missing = [k for k in COLUMNS if k not in columns]
        if missing:
            raise ValueError(f"gallery protocol {name!r}: columns {missing} missing (expected {list(COLUMNS)}).")
        return cls(*(columns[k] for k in COLUMNS), name=name)

    @classmethod
    def from_entries(cls, entries, name=""):
        """From documented entries ``{"query_index", "gallery": [{"image", "bbox" or None}]}``."""
        query_index, counts, images, image_index, has_box, boxes = [], [], {}, [], [], []
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and "query_index" in e and "gallery" in e):
                raise ValueError(f"gallery_protocols[{name!r}] entry {i}: expected a dict with 'query_index' and "
                                 f"'gallery', got {type(e).__name__} {sorted(e) if isinstance(e, dict) else ''}")
            query_index.append(int(e["query_index"]))
            counts.append(len(e["gallery"]))
            for g in e["gallery"]:
                image_index.append(images.setdefault(g["image"], len(images)))
                has_box.append(g["bbox"] is not None)
                if g["bbox"] is not None:
                    boxes.append(g["bbox"])
        return cls(query_index, counts, list(images), image_index, has_box, boxes, name=name)

    def columns(self):
        """The arrays of ``COLUMNS`` (what the parse cache stores)."""
        return {k: getattr(self, k) for k in COLUMNS}

    def table(self):
        return self

    def __len__(self):
        return len(self.query_index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        s, e = int(self.starts[i]), int(self.starts[i] + self.counts[i])
        names = self.images[self.image_index[s:e]].tolist()
        flags = self.has_box[s:e]
        first_box = int(self._box_starts[i])
        boxes = iter(self.boxes[first_box:first_box + int(flags.sum())].tolist())
        gallery = [{"image": n, "bbox": next(boxes) if f else None} for n, f in zip(names, flags.tolist())]
        return {"query_index": int(self.query_index[i]), "gallery": gallery}

    def __iter__(self):
        names = self.images[self.image_index].tolist()
        boxes = iter(self.boxes.tolist())
        gallery = [{"image": n, "bbox": next(boxes) if f else None} for n, f in zip(names, self.has_box.tolist())]
        for qi, s, c in zip(self.query_index.tolist(), self.starts.tolist(), self.counts.tolist()):
            yield {"query_index": qi, "gallery": gallery[s:s + c]}

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        return f"ProtocolTable({self.name!r}, {len(self)} queries, {len(self.image_index)} gallery entries)"
