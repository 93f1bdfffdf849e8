"""CUHK-SYSU from its real layout (annotation/*.mat) into the project's record contract.

Layout (root ``$DETECTRON2_DATASETS/CUHK-SYSU``): ``Image/SSM/<name>.jpg``; ``annotation/Images.mat``
(``Img``: every person box per image), ``annotation/pool.mat`` (``pool``: test image names),
``annotation/test/train_test/Train.mat`` (``Train``: training identities), ``TestG{50..4000}.mat``
(queries and their galleries, positives first) and ``annotation/test/subset/{Occlusion,Resolution}.mat``.
"""
import logging
import os
from collections.abc import Sequence

import numpy as np
from detectron2.structures import BoxMode

from .mat_struct_scan import scan_struct
from .matlab import (MatFormatError, as_numbers, as_str, cell_strings, field, load_mat, mat_key,
                     struct_elements, unwrap)
from .protocol_table import ProtocolTable
from .records import (cached_parse, dropped_by_image, image_size, log_drops, pack_records, unpack_records,
                      xywh_to_xyxy)

logger = logging.getLogger(__name__)

__all__ = ["GALLERY_SIZES", "PROTOCOL_NAMES", "CUHKSYSU", "LAYOUT"]

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
# protocol name -> (path under annotation/test, accepted keys)
_PROTOCOL_FILES = {f"TestG{n}": (f"train_test/TestG{n}.mat", (f"TestG{n}",)) for n in GALLERY_SIZES}
_PROTOCOL_FILES["Occlusion"] = ("subset/Occlusion.mat", ("Occlusion1", "Occlusion"))
_PROTOCOL_FILES["Resolution"] = ("subset/Resolution.mat", ("Test_Size", "Resolution"))
PROTOCOL_NAMES = tuple(_PROTOCOL_FILES)

LAYOUT = (
    "Expected CUHK-SYSU layout: <root>/Image/SSM/<name>.jpg, <root>/annotation/Images.mat (key Img), "
    "<root>/annotation/pool.mat (key pool), <root>/annotation/test/train_test/Train.mat (key Train) and "
    "TestG{50,100,500,1000,2000,4000}.mat (keys TestG<N>), <root>/annotation/test/subset/Occlusion.mat "
    "(key Occlusion1) and Resolution.mat (key Test_Size)."
)


def _box_key(xywh):
    return tuple(np.rint(xywh).astype(np.int64).tolist())


def _to_xyxy(boxes):
    """[N,4] xywh -> list of [x1,y1,x2,y2] float lists (vectorised: ~100k boxes)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).tolist()


def _gallery_entries(gallery, where):
    """[(imname, xywh or None)] of a Gallery struct array; fast path for the plain loadmat nesting
    (2,900 x 4,000 entries in TestG4000), the general readers otherwise."""
    g = unwrap(gallery)
    if not (isinstance(g, np.ndarray) and g.dtype.names):
        g = struct_elements(g, where)
        names = [field(e, "imname", where) for e in g]
        locs = [field(e, "idlocate", where) for e in g]
    else:
        for f in ("imname", "idlocate"):
            if f not in g.dtype.names:
                raise MatFormatError(f"{where}: expected field {f!r}, found {list(g.dtype.names)}")
        names, locs = g["imname"].ravel(order="F"), g["idlocate"].ravel(order="F")
    out = []
    for j, (nm, loc) in enumerate(zip(names, locs)):
        if isinstance(nm, np.ndarray) and nm.dtype.kind == "U" and nm.size == 1:
            name = str(nm.flat[0])
        else:
            name = as_str(nm, f"{where}({j + 1}).imname")
        if isinstance(loc, np.ndarray) and loc.dtype.kind == "f" and loc.size in (0, 4):
            box = loc.ravel()
        else:
            box = as_numbers(loc, f"{where}({j + 1}).idlocate", 4)
        out.append((name, box if box.size else None))
    return out


class CUHKSYSU:
    """Parses one CUHK-SYSU root; ``records(split)`` gives the detectron2 dicts of a split.

    After ``records(split)``, ``dropped`` maps image basenames to the (annotation file, what)
    of the boxes the split lost (for errors that must blame the right file).
    """

    def __init__(self, root):
        self.root = root
        self.dropped = {}
        self.ann = os.path.join(root, "annotation")
        self.image_dir = os.path.join(root, "Image", "SSM")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"CUHK-SYSU root {root} does not exist. {LAYOUT}")
        for p in (self.image_dir, self.ann):
            if not os.path.isdir(p):
                raise FileNotFoundError(f"Missing directory {p}. {LAYOUT}")

    # ---------- paths
    def _path(self, *parts):
        return os.path.join(self.ann, *parts)

    def protocol_path(self, name):
        return self._path("test", _PROTOCOL_FILES[name][0])

    def _base_sources(self):
        return [self._path("Images.mat"), self._path("pool.mat"),
                self._path("test", "train_test", "Train.mat"), self.protocol_path("TestG50")]

    # ---------- parsing
    def _parse_images(self, drops):
        """{image name: [K,4] xywh}; boxes with non-finite values, w<=0 or h<=0 go to ``drops``
        as [None (split decided later), kind, file, image]."""
        path = self._path("Images.mat")
        rel = os.path.relpath(path, self.root)
        img = mat_key(load_mat(path, LAYOUT), path, ("Img",))
        images = {}
        for i, rec in enumerate(struct_elements(img, f"{path}:Img")):
            where = f"{path}:Img({i + 1})"
            name = as_str(field(rec, "imname", where), f"{where}.imname")
            boxes = []
            for j, b in enumerate(struct_elements(field(rec, "box", where), f"{where}.box")):
                xywh = as_numbers(field(b, "idlocate", f"{where}.box({j + 1})"), f"{where}.box({j + 1}).idlocate", 4)
                if xywh.size == 0:
                    continue
                if not np.isfinite(xywh).all():
                    drops.append([None, "non_finite", rel, name])
                elif xywh[2] <= 0 or xywh[3] <= 0:
                    drops.append([None, "degenerate", rel, name])
                else:
                    boxes.append(xywh)
            images[name] = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return images

    def _parse_queries(self, name):
        """[(query_image, query_xywh, idname), [(gallery_image, xywh or None), ...]] in file order."""
        path = self.protocol_path(name)
        arr = mat_key(load_mat(path, LAYOUT), path, _PROTOCOL_FILES[name][1])
        key = _PROTOCOL_FILES[name][1][0]
        out = []
        for i, rec in enumerate(struct_elements(arr, f"{path}:{key}")):
            where = f"{path}:{key}({i + 1})"
            q = struct_elements(field(rec, "Query", where), f"{where}.Query")
            if len(q) != 1:
                raise MatFormatError(f"{where}.Query: expected one struct, got {len(q)}")
            q = q[0]
            qbox = as_numbers(field(q, "idlocate", f"{where}.Query"), f"{where}.Query.idlocate", 4)
            if qbox.size != 4:
                raise MatFormatError(f"{where}.Query.idlocate: expected [x, y, w, h], got an empty array")
            if not (np.isfinite(qbox).all() and qbox[2] > 0 and qbox[3] > 0):
                raise MatFormatError(f"{where}.Query.idlocate: expected [x, y, w, h] with finite values and positive "
                                     f"width and height, got {qbox.tolist()}")
            idname = as_str(field(q, "idname", f"{where}.Query"), f"{where}.Query.idname") \
                if "idname" in q.dtype.names else ""
            query = (as_str(field(q, "imname", f"{where}.Query"), f"{where}.Query.imname"), qbox, idname)
            out.append((query, _gallery_entries(field(rec, "Gallery", where), f"{where}.Gallery")))
        return out

    def _parse_base(self):
        drops = []
        images = self._parse_images(drops)
        pool_path = self._path("pool.mat")
        pool = cell_strings(mat_key(load_mat(pool_path, LAYOUT), pool_path, ("pool",)), f"{pool_path}:pool")
        missing = [n for n in pool if n not in images]
        if missing:
            raise MatFormatError(f"{pool_path}:pool names {missing[:5]} (of {len(missing)}) are not in Images.mat")
        pool_set = set(pool)
        for d in drops:
            d[0] = "gallery" if d[3] in pool_set else "train"
        index = {n: {tuple(b): k for k, b in enumerate(np.rint(boxes).astype(np.int64).tolist())}
                 for n, boxes in images.items()}
        pids = {n: np.full(len(b), -1, dtype=np.int64) for n, b in images.items()}

        def assign(name, xywh, pid, split, rel):
            if not np.isfinite(xywh).all():
                drops.append([split, "identity_non_finite", rel, None])
                return
            k = index.get(name, {}).get(_box_key(xywh))
            if k is None:
                drops.append([split, "identity_unmatched", rel, None])
            else:
                pids[name][k] = pid

        train_path = self._path("test", "train_test", "Train.mat")
        train = mat_key(load_mat(train_path, LAYOUT), train_path, ("Train",))
        identities = struct_elements(train, f"{train_path}:Train")
        train_rel = os.path.relpath(train_path, self.root)
        for pid, ident in enumerate(identities):
            where = f"{train_path}:Train{{{pid + 1}}}"
            for j, s in enumerate(struct_elements(field(ident, "scene", where), f"{where}.scene")):
                sw = f"{where}.scene({j + 1})"
                assign(as_str(field(s, "imname", sw), f"{sw}.imname"),
                       as_numbers(field(s, "idlocate", sw), f"{sw}.idlocate", 4), pid, "train", train_rel)
        queries = self._parse_queries("TestG50")
        test_rel = os.path.relpath(self.protocol_path("TestG50"), self.root)
        for qi, ((qname, qbox, _), gallery) in enumerate(queries):
            assign(qname, qbox, qi, "gallery", test_rel)
            for gname, gbox in gallery:
                if gbox is not None:
                    assign(gname, gbox, qi, "gallery", test_rel)

        names = list(images)
        sizes = {n: image_size(os.path.join(self.image_dir, n)) for n in names}

        def record(image_id, n):
            h, w = sizes[n]
            return {"file_name": os.path.join(self.image_dir, n), "image_id": image_id, "height": h, "width": w,
                    "camera_id": -1}

        image_ids = {n: i for i, n in enumerate(names)}
        splits = {"train": [], "gallery": [], "query": []}
        for n in names:
            if n in pool_set:
                continue
            splits["train"].append((n, pids[n]))
        for n in pool:
            splits["gallery"].append((n, pids[n]))
        out = {}
        for split in ("train", "gallery"):
            recs = []
            for n, p in splits[split]:
                r = record(image_ids[n], n)
                r["annotations"] = [
                    {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": pid}
                    for b, pid in zip(_to_xyxy(images[n]), p.tolist())
                ]
                recs.append(r)
            out[split] = pack_records(recs, self.root)
        query_recs = []
        for qi, ((qname, qbox, idname), _) in enumerate(queries):
            if qname not in sizes:
                raise MatFormatError(f"{self.protocol_path('TestG50')}: query image {qname} is not in Images.mat")
            r = record(image_ids[qname], qname)
            r["query"] = {"bbox": xywh_to_xyxy(qbox), "person_id": qi, "idname": idname}
            query_recs.append(r)
        out["query"] = pack_records(query_recs, self.root)
        out["num_pids"] = len(identities)
        out["drops"] = drops
        return out

    # ---------- public
    def records(self, split):
        base = cached_parse(self.root, "cuhk_sysu_base", self._existing(self._base_sources()), self._parse_base)
        log_drops("CUHK-SYSU", self.root, split, base["drops"])
        self.dropped = dropped_by_image(self.root, split, base["drops"])
        return unpack_records(base[split], self.root), base["num_pids"]

    def _existing(self, paths):
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"Missing annotation file {p}. {LAYOUT}")
        return paths

    def _read_protocol(self, name):
        """(queries [(imname, xywh, idname)], gallery counts, gallery image names, has-box flags, [P,4]
        xywh of the boxes) through ``scipy.io.loadmat``: every layout, and the precise errors."""
        queries = self._parse_queries(name)
        gallery = [entry for _, entries in queries for entry in entries]
        boxes = [b for _, b in gallery if b is not None]
        return ([q for q, _ in queries], [len(entries) for _, entries in queries], [g for g, _ in gallery],
                [b is not None for _, b in gallery], np.asarray(boxes, np.float64).reshape(-1, 4))

    def _scan_protocol(self, name):
        """What ``_read_protocol`` returns, read by ``mat_struct_scan`` (TestG100.mat: about 10x faster
        than loadmat); None for any layout or value it does not take, which then goes to loadmat."""
        path = self.protocol_path(name)
        tree = scan_struct(path, _PROTOCOL_FILES[name][1][0])
        if tree is None:
            return None
        query, gallery = tree.children([0], "Query"), tree.children([0], "Gallery")
        if query is None or gallery is None or (tree.numel[query] != 1).any():
            return None
        qnames, gnames = tree.strings(tree.children(query, "imname")), tree.strings(tree.children(gallery, "imname"))
        qboxes, gboxes = tree.numbers(tree.children(query, "idlocate")), tree.numbers(tree.children(gallery, "idlocate"))
        if qnames is None or gnames is None or qboxes is None or gboxes is None:
            return None
        idnames = [""] * len(qnames)
        if "idname" in tree.field_names:
            idnames = tree.strings(tree.children(query, "idname"))
            if idnames is None:
                return None
        qxywh = qboxes[0].reshape(-1, 4) if (qboxes[1] == 4).all() else None
        if qxywh is None or not (np.isfinite(qxywh).all() and (qxywh[:, 2:] > 0).all()) or \
                not np.isin(gboxes[1], (0, 4)).all():
            return None
        queries = [(n, b, i) for n, b, i in zip(qnames, qxywh, idnames)]
        return queries, tree.numel[gallery], gnames, gboxes[1] == 4, gboxes[0].reshape(-1, 4)

    def parse_protocol(self, name):
        """The ``ProtocolTable`` of one .mat (cached); a sequence of entries {"query_index", "gallery": [{"image",
        "bbox"}]}."""
        sources = self._existing([self.protocol_path(name), self.protocol_path("TestG50")])

        def parse():
            path, key = self.protocol_path(name), _PROTOCOL_FILES[name][1][0]
            queries, counts, names, has_box, xywh = self._scan_protocol(name) or self._read_protocol(name)
            if name == "TestG50":
                main = {(q[0], _box_key(q[1])): i for i, q in enumerate(queries)}
            else:  # the query records (TestG50's queries, in order) are parsed and cached already
                main = {}
                for r in self.records("query")[0]:
                    x1, y1, x2, y2 = r["query"]["bbox"]
                    main[(os.path.basename(r["file_name"]), _box_key([x1, y1, x2 - x1, y2 - y1]))] = r["query"]["person_id"]
            query_index = []
            for qname, qbox, _ in queries:
                qi = main.get((qname, _box_key(qbox)))
                if qi is None:
                    raise MatFormatError(f"{path}: query {qname} {qbox.tolist()} is not a query of TestG50.mat")
                query_index.append(qi)
            bad = np.flatnonzero(~np.isfinite(xywh).all(axis=1))
            if len(bad):
                entry = np.flatnonzero(has_box)[bad[0]]
                ends = np.cumsum(counts)
                i = int(np.searchsorted(ends, entry, side="right"))
                j = int(entry - ends[i] + counts[i])
                raise MatFormatError(f"{path}:{key}({i + 1}).Gallery({j + 1}).idlocate: non-finite values "
                                     f"{xywh[bad[0]].tolist()}")
            images = {}
            image_index = [images.setdefault(g, len(images)) for g in names]
            return {"query_index": np.asarray(query_index, np.int64), "counts": np.asarray(counts, np.int64),
                    "images": np.asarray(list(images), dtype=str),
                    "image_index": np.asarray(image_index, np.int64), "has_box": np.asarray(has_box, bool),
                    "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)}

        return ProtocolTable.from_columns(cached_parse(self.root, f"cuhk_sysu_{name}", sources, parse), name)

    def protocols(self):
        return {name: LazyProtocol(self, name) for name in PROTOCOL_NAMES}


class LazyProtocol(Sequence):
    """The entries of one protocol, parsed on first access: TestG4000 alone holds 11.6M gallery entries."""

    def __init__(self, dataset, name):
        self._dataset, self.name, self._entries = dataset, name, None

    def table(self):
        """The parsed ``ProtocolTable`` (what the evaluator reads)."""
        if self._entries is None:
            self._entries = self._dataset.parse_protocol(self.name)
        return self._entries

    def __getitem__(self, i):
        return self.table()[i]

    def __len__(self):
        return len(self.table())

    def __iter__(self):
        return iter(self.table())

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        state = "not parsed" if self._entries is None else f"{len(self._entries)} queries"
        return f"LazyProtocol({self.name}, {state})"
