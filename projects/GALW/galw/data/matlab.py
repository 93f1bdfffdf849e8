"""Reading MATLAB structs and cells as loaded by ``scipy.io.loadmat`` (default nesting).

The person-search annotation files mix 1x1 wrappers, cell arrays of structs, struct arrays and
1x0 empties; these helpers flatten them in one place so each loader reads fields by name.
"""
import io
import os

import numpy as np
import scipy.io

__all__ = ["MatFormatError", "load_mat", "mat_key", "unwrap", "as_str", "as_numbers", "struct_elements",
           "field", "cell_strings", "savemat_deterministic"]


class MatFormatError(ValueError):
    """A .mat file lacks an expected key or has an unexpected shape."""


def load_mat(path, layout_hint=""):
    """``scipy.io.loadmat`` with an error naming the path (and expected layout) when it is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing annotation file {path}. {layout_hint}".strip())
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for corrupt files
        raise MatFormatError(f"Cannot read .mat file {path}: {e}") from e


def mat_key(mat, path, keys):
    """The value under the first present key of ``keys``; error naming the file and keys otherwise."""
    for k in keys:
        if k in mat:
            return mat[k]
    found = sorted(k for k in mat if not k.startswith("__"))
    raise MatFormatError(f"{path}: expected key {' or '.join(map(repr, keys))}, found {found}")


def unwrap(x):
    """Strip 1x1 cell wrappers (object arrays of size 1)."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.flat[0]
    return x


def as_str(x, where):
    """A MATLAB char array (possibly cell-wrapped) as a Python str."""
    x = unwrap(x)
    if isinstance(x, str):
        return x
    if isinstance(x, np.ndarray) and x.dtype.kind == "U" and x.size == 1:
        return str(x.flat[0])
    raise MatFormatError(f"{where}: expected a string, got {type(x).__name__} {getattr(x, 'shape', '')}")


def as_numbers(x, where, length=None):
    """A numeric array as a flat float64 vector; ``length`` checks its size (0 allowed for 1x0)."""
    x = unwrap(x)
    try:
        arr = np.asarray(x, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise MatFormatError(f"{where}: expected numbers, got {type(x).__name__}") from e
    if length is not None and arr.size not in (0, length):
        raise MatFormatError(f"{where}: expected {length} numbers or an empty array, got shape {np.shape(x)}")
    return arr


def struct_elements(x, where):
    """The elements (np.void records) of a struct array or of a cell array of structs, in order."""
    x = unwrap(x)
    if isinstance(x, np.void) and x.dtype.names:
        return [x]
    if not isinstance(x, np.ndarray):
        raise MatFormatError(f"{where}: expected a struct or cell array, got {type(x).__name__}")
    if x.dtype.names:
        return list(x.ravel(order="F"))
    if x.dtype == object:
        out = []
        for i, cell in enumerate(x.ravel(order="F")):
            out.extend(struct_elements(cell, f"{where}{{{i}}}"))
        return out
    if x.size == 0:
        return []
    raise MatFormatError(f"{where}: expected a struct or cell array, got dtype {x.dtype} shape {x.shape}")


def field(rec, name, where):
    """Field ``name`` of a struct element; error naming the location and the field otherwise."""
    names = rec.dtype.names or ()
    if name not in names:
        raise MatFormatError(f"{where}: expected field {name!r}, found {list(names)}")
    return rec[name]


def cell_strings(x, where):
    """A cell array (or char matrix) of names as a list of str, in order."""
    if isinstance(x, np.ndarray) and x.dtype.kind == "U":
        return [str(s).strip() for s in x.ravel()]
    if not (isinstance(x, np.ndarray) and x.dtype == object):
        raise MatFormatError(f"{where}: expected a cell array of strings, got {type(x).__name__}")
    return [as_str(c, f"{where}{{{i}}}").strip() for i, c in enumerate(x.ravel(order="F"))]


def cell_array(items):
    """An Nx1 MATLAB cell array, nested as ``loadmat`` returns the real split files."""
    arr = np.empty((len(items), 1), dtype=object)
    for i, v in enumerate(items):
        arr[i, 0] = v
    return arr


def struct_array(names, rows):
    """A 1xN MATLAB struct array: a numpy structured array of object fields ``names``."""
    arr = np.zeros((1, len(rows)), dtype=[(n, object) for n in names])
    for j, row in enumerate(rows):
        for n, v in zip(names, row):
            arr[0, j][n] = v
    return arr


_HEADER = b"MATLAB 5.0 MAT-file, written by galw.data (deterministic header)"


def savemat_deterministic(path, mdict):
    """``scipy.io.savemat`` with a fixed header text (scipy stamps the creation time otherwise)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, do_compression=False, oned_as="row")
    data = bytearray(buf.getvalue())
    data[:116] = _HEADER.ljust(116, b" ")
    with open(path, "wb") as f:
        f.write(bytes(data))
