"""Vectorised reading of a large MATLAB struct array (MAT v5) whose leaves are strings and numbers.

``scipy.io.loadmat`` builds one numpy object per struct field, and CUHK-SYSU's TestG100.mat holds
870k of them. The MAT v5 layout makes every matrix an 8-byte aligned element
with a fixed header, so all of them can be located, typed and decoded with array operations.

``scan_struct(path, key)`` returns a ``StructTree``, or ``None`` for anything it does not read
(other MAT versions, big-endian files, cells, objects, sparse or complex leaves, an inconsistent
element layout); callers then use ``scipy.io.loadmat``, which also gives the precise errors.
"""
import os
import zlib

import numpy as np

from .protocol_table import concatenated_ranges

__all__ = ["StructTree", "scan_struct"]

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED, MI_UTF8 = 1, 5, 6, 14, 15, 16
MX_STRUCT, MX_CHAR, MX_SPARSE = 2, 4, 5
NUMERIC_CLASSES = set(range(6, 16))  # double, single, int8 .. uint64
#: data element type -> numpy dtype of its values (MATLAB stores integral doubles in smaller types)
DATA_TYPES = {1: "<i1", 2: "<u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}
COMPLEX_FLAG = 0x800


def _padded_words(nbytes):
    """32-bit words of a data element's payload, padded to 8 bytes."""
    return ((nbytes + 7) // 8) * 2


def _variable_bytes(path, key):
    """The bytes of variable ``key``'s miMATRIX element (decompressed), or None."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 136 or data[126:128] != b"IM" or data[124:126] != b"\x00\x01":
        return None
    pos = 128
    while pos + 8 <= len(data):
        dtype, nbytes = np.frombuffer(data, "<u4", 2, pos)
        element = data[pos:pos + 8 + int(nbytes)]
        pos += 8 + int(nbytes)
        if dtype == MI_COMPRESSED:
            try:
                element = zlib.decompress(element[8:])
            except zlib.error:
                return None
        elif dtype == MI_MATRIX:
            pos += (-pos) % 8
        else:
            return None
        if len(element) % 8 or len(element) < 48:
            return None
        words = np.frombuffer(element, "<u4")
        if _name(element, words, 0) == key:
            return element
    return None


def _name(buf, words, m):
    """The array name of the matrix at word ``m``, or None."""
    if len(words) < m + 12 or words[m] != MI_MATRIX or words[m + 2] != MI_UINT32 or words[m + 6] != MI_INT32:
        return None
    n = m + 8 + _padded_words(words[m + 7])
    if n + 2 > len(words):
        return None
    offset, length = (4 * (n + 1), words[n] >> 16) if words[n] >> 16 else (4 * (n + 2), words[n + 1])
    return buf[offset:offset + length].decode("latin-1")


class StructTree:
    """Every matrix of one variable: arrays over matrices in file order (index 0 is the variable).

    ``parent`` (-1 for the variable), ``element`` (0-based, column-major in the parent) and
    ``field`` (an index into ``field_names``) place each matrix; ``cls`` is its MATLAB class,
    ``rows`` and ``numel`` its size.
    """

    def __init__(self, buf, words, cls, rows, numel, data_word, parent, element, field, field_names):
        self._buf, self._words, self._data_word = np.frombuffer(buf, np.uint8), words, data_word
        self.cls, self.rows, self.numel = cls, rows, numel
        self.parent, self.element, self.field, self.field_names = parent, element, field, field_names

    def children(self, parents, name):
        """Matrices holding field ``name`` of the structs ``parents`` (ascending indices of one level),
        ordered by parent then element; None when a parent lacks the field."""
        parents = np.asarray(parents, np.int64)
        if name not in self.field_names or (np.diff(parents) <= 0).any():
            return None
        pick = np.flatnonzero((self.field == self.field_names.index(name)) & np.isin(self.parent, parents))
        return pick if len(pick) == self.numel[parents].sum() else None

    def _data(self, mats):
        """(data type, byte offset, byte count) of the data element of each leaf in ``mats``."""
        d = self._data_word[mats]
        head = self._words[d]
        small = (head >> 16) > 0
        dtype = np.where(small, head & 0xFFFF, head)
        nbytes = np.where(small, head >> 16, self._words[np.minimum(d + 1, len(self._words) - 1)])
        offset = np.where(small, 4 * (d + 1), 4 * (d + 2))
        return dtype.astype(np.int64), offset.astype(np.int64), nbytes.astype(np.int64)

    def _gather(self, offsets, counts, itemsize):
        """Concatenated items (bytes) of several leaves, as a flat uint8 array."""
        return self._buf[concatenated_ranges(offsets, counts * itemsize)]

    def numbers(self, mats):
        """(float64 values of all ``mats`` concatenated, count per matrix), or None if one is not numeric
        (or ``mats`` is None: a missing field)."""
        if mats is None:
            return None
        mats = np.asarray(mats, np.int64)
        if not np.isin(self.cls[mats], list(NUMERIC_CLASSES)).all():
            return None
        dtype, offset, nbytes = self._data(mats)
        counts = self.numel[mats]
        values = np.empty(int(counts.sum()), np.float64)
        starts = np.cumsum(counts) - counts
        for code in np.unique(dtype):
            if int(code) not in DATA_TYPES:
                return None
            item = np.dtype(DATA_TYPES[int(code)])
            sel = np.flatnonzero(dtype == code)
            if (nbytes[sel] != counts[sel] * item.itemsize).any():
                return None
            raw = self._gather(offset[sel], counts[sel], item.itemsize)
            values[concatenated_ranges(starts[sel], counts[sel])] = raw.view(item)
        return values, counts

    def strings(self, mats):
        """The strings of the 1xN char matrices ``mats``, or None if one is not a char row (or ``mats``
        is None: a missing field)."""
        if mats is None:
            return None
        mats = np.asarray(mats, np.int64)
        if not ((self.cls[mats] == MX_CHAR) & (self.rows[mats] <= 1)).all():
            return None
        dtype, offset, nbytes = self._data(mats)
        if not np.isin(dtype, (2, 4, MI_UTF8)).all():
            return None
        out = np.empty(len(mats), dtype=object)
        for code, unit, encoding in ((4, 2, "utf-16-le"), (2, 1, "latin-1"), (MI_UTF8, 1, "utf-8")):
            sel = np.flatnonzero(dtype == code)
            if not len(sel):
                continue
            if code != MI_UTF8 and (nbytes[sel] != self.numel[mats[sel]] * unit).any():
                return None
            units = nbytes[sel] // unit
            raw = self._gather(offset[sel], units, unit).view(f"<u{unit}")
            joined = np.zeros(len(raw) + len(sel), raw.dtype)  # a 0 unit after each string
            joined[concatenated_ranges(np.cumsum(units + 1) - (units + 1), units)] = raw
            try:
                parts = joined.tobytes().decode(encoding).split("\x00")
            except UnicodeDecodeError:
                return None
            if len(parts) != len(sel) + 1:
                return None
            out[sel] = parts[:-1]
        return out.tolist()


def _field_layouts(buf, words, f):
    """Per struct whose field-name-length element is at word ``f[i]``: (field names, word of its first
    field matrix), or None for a layout this reader does not know."""
    f = np.asarray(f, np.int64)
    small = words[f] == (4 << 16) | MI_INT32
    full = (words[f] == MI_INT32) & (words[np.minimum(f + 1, len(words) - 1)] == 4)
    if not (small | full).all():
        return None
    length = np.where(small, words[f + 1], words[np.minimum(f + 2, len(words) - 1)]).astype(np.int64)
    g = np.where(small, f + 2, f + 4)
    if (words[g] != MI_INT8).any() or (length <= 0).any():
        return None
    total = words[g + 1].astype(np.int64)
    first = g + 2 + _padded_words(total)
    if (total % length).any() or (4 * (g + 2) + total > len(buf)).any():
        return None
    layouts = {}
    names = []
    for n, a, b in zip(length.tolist(), (4 * (g + 2)).tolist(), (4 * (g + 2) + total).tolist()):
        raw = buf[a:b]
        if (n, raw) not in layouts:
            layouts[(n, raw)] = tuple(raw[i:i + n].split(b"\x00", 1)[0].decode("latin-1") for i in range(0, len(raw), n))
        names.append(layouts[(n, raw)])
    return names, first


def scan_struct(path, key):
    """The ``StructTree`` of variable ``key`` of the MAT v5 file ``path``, or None (see the module)."""
    if not os.path.isfile(path):
        return None
    buf = _variable_bytes(path, key)
    if buf is None:
        return None
    try:
        return _scan(buf)
    except IndexError:  # an element whose sizes point past the variable
        return None


def _scan(buf):
    words = np.frombuffer(buf, "<u4")
    w = 2 * np.flatnonzero(words[0:len(words) - 9:2] == MI_MATRIX)
    w = w[(words[w + 2] == MI_UINT32) & (words[w + 3] == 8) & (words[w + 6] == MI_INT32)]
    if not len(w) or w[0] != 0:
        return None
    end = w + 2 + words[w + 1].astype(np.int64) // 4
    flags = words[w + 4]
    cls = (flags & 0xFF).astype(np.int64)
    if ((cls == MX_SPARSE) | ~np.isin(cls, [MX_STRUCT, MX_CHAR] + sorted(NUMERIC_CLASSES))).any() or \
            (flags & COMPLEX_FLAG).any() or (words[w + 7] % 4).any() or (words[w + 7] < 8).any() or \
            end[0] != len(words) or (end > len(words)).any():
        return None
    ndims = words[w + 7].astype(np.int64) // 4
    dims = [np.where(ndims > k, words[np.minimum(w + 8 + k, len(words) - 1)], 1).astype(np.int64)
            for k in range(int(ndims.max()))]
    numel = np.prod(dims, axis=0)
    name_word = w + 8 + ((words[w + 7].astype(np.int64) + 7) // 8) * 2
    small = (words[name_word] >> 16) > 0
    name_len = np.where(small, 0, words[np.minimum(name_word + 1, len(words) - 1)]).astype(np.int64)
    data_word = name_word + np.where(small, 2, 2 + ((name_len + 7) // 8) * 2)
    if (data_word + 2 > end).any():
        return None

    # nesting: a matrix's parent is the innermost struct containing it
    structs = np.flatnonzero(cls == MX_STRUCT)
    s_start, s_end = w[structs], end[structs]
    depth = np.searchsorted(s_start, w, side="left") - np.searchsorted(np.sort(s_end), w, side="right")
    parent = np.full(len(w), -1, np.int64)
    for d in range(1, int(depth.max()) + 1 if len(w) > 1 else 1):
        level = structs[depth[structs] == d - 1]
        mine = np.flatnonzero(depth == d)
        at = np.searchsorted(w[level], w[mine], side="right") - 1
        if (at < 0).any() or (end[level[at]] < end[mine]).any():
            return None
        parent[mine] = level[at]
    if (parent[1:] < 0).any():
        return None

    # children of each struct: element-major, fields in declared order, tiling its data
    layouts = _field_layouts(buf, words, data_word[structs])
    if layouts is None:
        return None
    names, first_word = layouts
    field_ids = {}
    table = [field_ids.setdefault(n, len(field_ids)) for layout in names for n in layout]
    nfields = np.zeros(len(w), np.int64)
    nfields[structs] = [len(layout) for layout in names]
    table_start = np.zeros(len(w), np.int64)
    table_start[structs] = np.cumsum(nfields[structs]) - nfields[structs]
    first = np.zeros(len(w), np.int64)
    first[structs] = first_word
    kids = np.flatnonzero(parent >= 0)
    kids = kids[np.argsort(parent[kids], kind="stable")]
    p = parent[kids]
    new_group = np.r_[True, p[1:] != p[:-1]] if len(kids) else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(kids)), 0)) if len(kids) else kids
    rank = np.arange(len(kids)) - group_start
    if (np.bincount(p, minlength=len(w))[structs] != numel[structs] * nfields[structs]).any():
        return None
    last = np.r_[p[1:] != p[:-1], True] if len(kids) else np.zeros(0, bool)
    if (w[kids[new_group]] != first[p[new_group]]).any() or (end[kids[last]] != end[p[last]]).any() or \
            (w[kids[1:]][~new_group[1:]] != end[kids[:-1]][~new_group[1:]]).any():
        return None
    element = np.zeros(len(w), np.int64)
    field = np.full(len(w), -1, np.int64)
    element[kids] = rank // np.maximum(nfields[p], 1)
    field[kids] = np.asarray(table, np.int64)[table_start[p] + rank % np.maximum(nfields[p], 1)]
    tree = StructTree(buf, words, cls, dims[0], numel, data_word, parent, element, field, list(field_ids))
    leaves = np.flatnonzero(cls != MX_STRUCT)
    _, offset, nbytes = tree._data(leaves)
    if (offset + nbytes > 4 * end[leaves]).any():
        return None
    return tree
