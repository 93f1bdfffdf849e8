"""PRW from its real layout (frames/, annotations/*.jpg.mat, split .mat files, query_info.txt)."""
import logging
import os
import re

import numpy as np
from detectron2.structures import BoxMode

from .matlab import MatFormatError, as_numbers, cell_strings, load_mat, mat_key
from .records import cached_parse, dropped_by_image, image_size, log_drops, pack_records, unpack_records

logger = logging.getLogger(__name__)

__all__ = ["PRW", "LAYOUT", "camera_of"]

LAYOUT = (
    "Expected PRW layout: <root>/frames/c<cam>s<seq>_<frame>.jpg, <root>/annotations/<frame>.jpg.mat "
    "(key box_new, anno_file or anno_previous: Nx5 [pid, x, y, w, h], pid -2 unlabeled), "
    "<root>/frame_train.mat (key img_index_train), <root>/frame_test.mat (key img_index_test), "
    "<root>/ID_train.mat (key ID_train), <root>/query_info.txt (lines 'pid x y w h frame')."
)
_ANNO_KEYS = ("box_new", "anno_file", "anno_previous")
_CAMERA = re.compile(r"c(\d)")


def camera_of(name):
    """Camera id: the digit after the first 'c' in the frame name (-1 when there is none)."""
    m = _CAMERA.search(name)
    return int(m.group(1)) if m else -1


def _clip(x, y, w, h, width, height):
    return [float(max(0.0, x)), float(max(0.0, y)), float(min(width, x + w)), float(min(height, y + h))]


class PRW:
    """Parses one PRW root; ``records(split)`` gives (records, train pid mapping or None).

    After ``records(split)``, ``dropped`` maps image basenames to the (annotation file, what)
    of the boxes the split lost (for errors that must blame the right file).
    """

    def __init__(self, root):
        self.root = root
        self.dropped = {}
        self.frames = os.path.join(root, "frames")
        self.annotations = os.path.join(root, "annotations")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"PRW root {root} does not exist. {LAYOUT}")
        for p in (self.frames, self.annotations):
            if not os.path.isdir(p):
                raise FileNotFoundError(f"Missing directory {p}. {LAYOUT}")

    def _file(self, name):
        p = os.path.join(self.root, name)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"Missing annotation file {p}. {LAYOUT}")
        return p

    def _split_names(self, split):
        fname, key = ("frame_train.mat", "img_index_train") if split == "train" else ("frame_test.mat", "img_index_test")
        path = self._file(fname)
        names = cell_strings(mat_key(load_mat(path, LAYOUT), path, (key,)), f"{path}:{key}")
        return [n if n.endswith(".jpg") else n + ".jpg" for n in names]

    def _frame_boxes(self, name, split, drops):
        """(pids, xywh) of one frame; rows with a non-finite value, w<=0 or h<=0 go to ``drops``."""
        path = os.path.join(self.annotations, name + ".mat")
        arr = np.asarray(mat_key(load_mat(path, LAYOUT), path, _ANNO_KEYS), dtype=np.float64)
        if arr.size == 0:
            return np.zeros(0, np.int64), np.zeros((0, 4))
        if arr.ndim != 2 or arr.shape[1] != 5:
            raise MatFormatError(f"{path}: expected an Nx5 array [pid, x, y, w, h] under {'/'.join(_ANNO_KEYS)}, "
                                 f"got shape {arr.shape}")
        finite = np.isfinite(arr).all(axis=1)
        keep = finite & (np.where(finite, arr[:, 3], 0) > 0) & (np.where(finite, arr[:, 4], 0) > 0)
        rel = os.path.relpath(path, self.root)
        drops.extend([split, "non_finite", rel, name] for _ in range(int((~finite).sum())))
        drops.extend([split, "degenerate", rel, name] for _ in range(int((finite & ~keep).sum())))
        return arr[keep, 0].astype(np.int64), arr[keep, 1:5]

    def _parse(self, split):
        names = self._split_names("train" if split == "train" else "test")
        drops, parsed = [], []
        for n in names:
            pids, boxes = self._frame_boxes(n, split, drops)
            parsed.append((n, pids, boxes))
        mapping = None
        if split == "train":
            labeled = sorted({int(p) for _, pids, _ in parsed for p in pids if p >= 0})
            mapping = {p: i for i, p in enumerate(labeled)}
            id_path = os.path.join(self.root, "ID_train.mat")
            if os.path.isfile(id_path):
                listed = {int(v) for v in as_numbers(mat_key(load_mat(id_path), id_path, ("ID_train",)), id_path)}
                if listed != set(labeled):
                    logger.warning("PRW %s lists %d ids, the training annotations carry %d; labels follow the "
                                   "annotations", id_path, len(listed), len(labeled))
        image_ids = self._image_ids()
        records = []
        for n, pids, boxes in parsed:
            h, w = image_size(os.path.join(self.frames, n))
            annos = []
            for pid, (x, y, bw, bh) in zip(pids, boxes):
                box = _clip(x, y, bw, bh, w, h)
                if box[2] <= box[0] or box[3] <= box[1]:
                    drops.append([split, "outside", os.path.relpath(os.path.join(self.annotations, n + ".mat"),
                                                                    self.root), n])
                    continue
                if pid < 0:
                    label = -1
                else:
                    label = mapping[int(pid)] if mapping is not None else int(pid)
                annos.append({"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": label})
            records.append({"file_name": os.path.join(self.frames, n), "image_id": image_ids[n], "height": h,
                            "width": w, "camera_id": camera_of(n), "annotations": annos})
        return {"records": pack_records(records, self.root), "drops": drops,
                "pid_mapping": None if mapping is None else sorted(mapping.items())}

    def _image_ids(self):
        names = sorted(self._split_names("train") + self._split_names("test"))
        return {n: i for i, n in enumerate(names)}

    def _parse_queries(self):
        path = self._file("query_info.txt")
        image_ids = self._image_ids()
        records, sizes = [], {}
        with open(path, "r", newline="") as f:
            lines = f.read().splitlines()
        for ln, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise MatFormatError(f"{path}:{ln}: expected 'pid x y w h frame_name', got {line!r}")
            try:
                pid, x, y, w, h = (float(v) for v in parts[:5])
            except ValueError as e:
                raise MatFormatError(f"{path}:{ln}: expected numbers 'pid x y w h', got {line!r}") from e
            if not np.isfinite([pid, x, y, w, h]).all():
                raise MatFormatError(f"{path}:{ln}: non-finite value in query {line!r}")
            name = parts[5] if parts[5].endswith(".jpg") else parts[5] + ".jpg"
            if name not in image_ids:
                raise MatFormatError(f"{path}:{ln}: query frame {name} is in neither frame_train.mat nor frame_test.mat")
            if name not in sizes:
                sizes[name] = image_size(os.path.join(self.frames, name))
            ih, iw = sizes[name]
            box = _clip(x, y, w, h, iw, ih)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise MatFormatError(f"{path}:{ln}: query box {[x, y, w, h]} is empty inside the {iw}x{ih} image")
            records.append({"file_name": os.path.join(self.frames, name), "image_id": image_ids[name],
                            "height": ih, "width": iw, "camera_id": camera_of(name),
                            "query": {"bbox": box, "person_id": int(pid)}})
        return {"records": pack_records(records, self.root), "drops": [], "pid_mapping": None}

    def records(self, split):
        split_file = "frame_train.mat" if split == "train" else "frame_test.mat"
        sources = [self._file(split_file), self._file("frame_train.mat" if split != "train" else "frame_test.mat")]
        if split == "query":
            parsed = cached_parse(self.root, "prw_query", sources + [self._file("query_info.txt")], self._parse_queries)
        else:
            names = self._split_names("train" if split == "train" else "test")
            anno = [os.path.join(self.annotations, n + ".mat") for n in names]
            for p in anno:
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"Missing annotation file {p}. {LAYOUT}")
            extra = [os.path.join(self.root, "ID_train.mat")] if split == "train" and os.path.isfile(
                os.path.join(self.root, "ID_train.mat")) else []
            parsed = cached_parse(self.root, f"prw_{split}", sources + extra + anno, lambda: self._parse(split))
        log_drops("PRW", self.root, split, parsed["drops"])
        self.dropped = dropped_by_image(self.root, split, parsed["drops"])
        mapping = parsed["pid_mapping"]
        return unpack_records(parsed["records"], self.root), None if mapping is None else dict(
            (int(p), int(label)) for p, label in mapping)
