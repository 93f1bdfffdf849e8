"""Shared pieces of the loaders: image sizes from headers, box conversion, drop logs and the parse cache."""
import hashlib
import json
import logging
import os
from collections import Counter

import numpy as np
from detectron2.structures import BoxMode
from PIL import Image

from galw_core.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["image_size", "xywh_to_xyxy", "cached_parse", "pack_records", "unpack_records", "CACHE_VERSION",
           "DROP_KINDS", "log_drops", "dropped_by_image"]

CACHE_VERSION = 3


def image_size(path):
    """(height, width) from the image header (PIL's open is lazy: no pixel is decoded); errors name the file."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Missing image {path}") from e
    except Exception as e:
        raise OSError(f"Unreadable image {path}: {e}") from e
    return int(h), int(w)


def xywh_to_xyxy(b):
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


# ---------------------------------------------------------------- dropped boxes

#: kind -> how a log line says it; a drop is [split, kind, file relative to the root, image basename or None].
DROP_KINDS = {
    "non_finite": "rejected {n} {box} with non-finite values",
    "degenerate": "dropped {n} {box} with w<=0 or h<=0",
    "outside": "dropped {n} {box} outside the image",
    "identity_non_finite": "{n} identity {box} with non-finite values left unlabeled",
    "identity_unmatched": "{n} identity {box} matching no Images.mat box (exact integer [x,y,w,h]) left unlabeled",
}


def log_drops(dataset, root, split, drops):
    """One warning line per kind of drop in ``split``, naming every file with its count.

    Called on every load (from the cache too), so a cached load is not silently smaller.
    """
    by_kind = {}
    for s, kind, rel, _ in drops:
        if s == split:
            by_kind.setdefault(kind, Counter())[rel] += 1
    for kind, files in by_kind.items():
        n = sum(files.values())
        what = DROP_KINDS[kind].format(n=n, box="box" if n == 1 else "boxes")
        where = ", ".join(f"{os.path.join(root, rel)} ({c})" for rel, c in files.items())
        logger.warning("%s %s (%s): %s: %s", dataset, split, root, what, where)


_ONE_BOX = {"non_finite": "a box with non-finite values", "degenerate": "a box with w<=0 or h<=0",
            "outside": "a box outside the image"}


def dropped_by_image(root, split, drops):
    """{image basename: [(annotation file, what was dropped)]} of the boxes dropped from ``split``."""
    out = {}
    for s, kind, rel, image in drops:
        if s == split and image is not None and kind in _ONE_BOX:
            out.setdefault(image, []).append((os.path.join(root, rel), _ONE_BOX[kind]))
    return out


# ---------------------------------------------------------------- parse cache

def _fingerprint(root, paths):
    """Key of the sources: paths relative to the root, mtimes and sizes (a moved root keeps its key)."""
    h = hashlib.sha1(str(CACHE_VERSION).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, root)}|{st.st_mtime_ns}|{st.st_size}\n".encode())
    return h.hexdigest()


def _flatten(value, prefix, arrays, plain):
    """Nested dicts (str keys) -> flat "a/b" names of arrays (no object dtype) and of JSON values."""
    for k, v in value.items():
        if not isinstance(k, str) or "/" in k:
            raise TypeError(f"parse cache key {prefix}{k!r}: keys are strings without '/'")
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            _flatten(v, name + "/", arrays, plain)
        elif isinstance(v, np.ndarray):
            if v.dtype == object:
                raise TypeError(f"parse cache entry {name}: object arrays would need pickle")
            arrays[name] = v
        else:
            plain[name] = v


def _save_cache(path, key, value):
    arrays, plain = {}, {}
    _flatten(value, "", arrays, plain)
    arrays["__key__"] = np.array(key)
    arrays["__json__"] = np.array(json.dumps(plain))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_cache(path, key):
    """The stored value, or None when the key differs. Never unpickles (allow_pickle=False)."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["__key__"]) != key:
            return None
        flat = json.loads(str(data["__json__"]))
        flat.update((name, data[name]) for name in data.files if not name.startswith("__"))
    value = {}
    for name, v in flat.items():
        *parents, leaf = name.split("/")
        node = value
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return value


_WARNED = set()  # legacy pickle caches already named in the log (once per process)


def cached_parse(root, name, source_files, parse_fn):
    """``parse_fn()`` cached as ``<root>/.galw_cache/<name>.npz``, keyed by the sources' mtimes and sizes.

    ``parse_fn`` returns a dict of numpy arrays (no object dtype), nested dicts of them, and
    JSON values. The file is read with ``numpy.load(allow_pickle=False)``: a crafted cache cannot
    run code, it is logged and re-parsed. Paths in the value must be relative to ``root`` (see
    :func:`pack_records`), so a moved or renamed root keeps its cache.

    Parsing the full .mat files takes tens of seconds; the cache makes later loads take about a
    second. An unwritable root just disables the cache (logged).
    """
    key = _fingerprint(root, source_files)
    cache_dir = os.path.join(root, ".galw_cache")
    path = os.path.join(cache_dir, f"{name}.npz")
    legacy = os.path.join(cache_dir, f"{name}.pkl")
    if os.path.isfile(legacy) and legacy not in _WARNED:
        _WARNED.add(legacy)
        logger.warning("Ignoring %s: parse caches are .npz files read without pickle; a pickle is never "
                       "loaded (delete the file)", legacy)
    if os.path.isfile(path):
        try:
            value = _load_cache(path, key)
            if value is not None:
                return value
        except Exception as e:  # a stale, truncated or crafted cache is re-parsed
            reason = "it holds pickled objects, which are never loaded" if "pickle" in str(e) else \
                f"{type(e).__name__}: {e}"
            logger.warning("Ignoring parse cache %s (re-parsing, then overwriting it): %s", path, reason)
    logger.info("Parsing %s annotations under %s (cached afterwards in %s)", name, root, path)
    value = parse_fn()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        _save_cache(path, key, value)
    except OSError as e:
        logger.warning("Parse cache disabled for %s (%s)", root, e)
    return value


# ---------------------------------------------------------------- records in columns

_INT_KEYS = ("image_id", "height", "width", "camera_id")


def _strings(values):
    """A numpy unicode array (loads without pickle, unlike an object array of str)."""
    return np.asarray(list(values), dtype=str)


def pack_records(records, root):
    """Columnar arrays of records for the cache, ``file_name`` relative to ``root``.

    Unpickling 100k small dicts takes seconds, arrays do not; relative names let the root move.
    A non-finite box is a loader bug here (the loaders reject them): ValueError naming the image.
    """
    annotated = [r for r in records if "annotations" in r]
    queries = [r["query"] for r in records if "query" in r]
    packed = {
        "file_name": _strings(os.path.relpath(r["file_name"], root) for r in records),
        **{k: np.asarray([r[k] for r in records], dtype=np.int64) for k in _INT_KEYS},
        "has_annotations": np.asarray(["annotations" in r for r in records], dtype=bool),
        "counts": np.asarray([len(r["annotations"]) for r in annotated], dtype=np.int64),
        "boxes": np.asarray([a["bbox"] for r in annotated for a in r["annotations"]], np.float64).reshape(-1, 4),
        "pids": np.asarray([a["person_id"] for r in annotated for a in r["annotations"]], dtype=np.int64),
        "has_query": np.asarray(["query" in r for r in records], dtype=bool),
        "query_boxes": np.asarray([q["bbox"] for q in queries], np.float64).reshape(-1, 4),
        "query_pids": np.asarray([q["person_id"] for q in queries], dtype=np.int64),
    }
    if queries and "idname" in queries[0]:
        packed["query_idnames"] = _strings(q["idname"] for q in queries)
    for boxes, owners in ((packed["boxes"], [r for r in annotated for _ in r["annotations"]]),
                          (packed["query_boxes"], [r for r in records if "query" in r])):
        bad = ~np.isfinite(boxes).all(axis=1)
        if bad.any():
            raise ValueError(f"non-finite box {boxes[bad][0].tolist()} in the record of "
                             f"{owners[int(np.flatnonzero(bad)[0])]['file_name']}")
    return packed


def unpack_records(packed, root):
    """Inverse of :func:`pack_records`, names joined to ``root`` (fresh dicts: callers may mutate them)."""
    names = packed["file_name"].tolist()
    ints = {k: packed[k].tolist() for k in _INT_KEYS}
    has, has_query = packed["has_annotations"].tolist(), packed["has_query"].tolist()
    boxes, pids, counts = packed["boxes"].tolist(), packed["pids"].tolist(), packed["counts"].tolist()
    qboxes, qpids = packed["query_boxes"].tolist(), packed["query_pids"].tolist()
    idnames = packed["query_idnames"].tolist() if "query_idnames" in packed else None
    out, k, a, q = [], 0, 0, 0
    for i, name in enumerate(names):
        r = {"file_name": os.path.join(root, name), **{key: ints[key][i] for key in _INT_KEYS}}
        if has[i]:
            c = counts[a]
            r["annotations"] = [{"bbox": boxes[j], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                                 "person_id": pids[j]} for j in range(k, k + c)]
            k, a = k + c, a + 1
        if has_query[i]:
            r["query"] = {"bbox": qboxes[q], "person_id": qpids[q]}
            if idnames is not None:
                r["query"]["idname"] = idnames[q]
            q += 1
        out.append(r)
    return out
