"""The vectorised MAT v5 struct reader: the same values as scipy.io.loadmat, or None (never a wrong value)."""
import os
import struct
import zlib

import numpy as np
import pytest
import scipy.io

from data_helpers import write_cuhk_sysu
from galw.data import CUHKSYSU
from galw.data.mat_struct_scan import scan_struct
from galw.data.matlab import struct_array as structs


# ---------------------------------------------------------------- MAT v5 bytes written by hand
def element(dtype, payload):
    """A data element in the full format, padded to 8 bytes."""
    return struct.pack("<II", dtype, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def small_element(dtype, payload):
    """A data element in the small format (payload of 4 bytes or fewer)."""
    return struct.pack("<HH", dtype, len(payload)) + payload.ljust(4, b"\0")


def matrix(cls, dims, body, name=b""):
    head = element(6, struct.pack("<II", cls, 0)) + element(5, struct.pack(f"<{len(dims)}i", *dims)) + element(1, name)
    return element(14, head + body)


def struct_matrix(dims, fields, children, name=b""):
    names = b"".join(f.encode().ljust(32, b"\0") for f in fields)
    return matrix(2, dims, small_element(5, struct.pack("<i", 32)) + element(1, names) + b"".join(children), name)


def mat_file(variable, compress):
    header = b"MATLAB 5.0 MAT-file, written by hand".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    if not compress:
        return header + variable
    packed = zlib.compress(variable)
    return header + struct.pack("<II", 15, len(packed)) + packed  # compressed elements are not padded


def hand_written(tmp_path, compress):
    """A 1x3 struct (imname, idlocate, ishard) in MATLAB's compact encodings: chars as UTF-8 (small and
    full format) and UINT16; integral doubles as UINT8 (small format), UINT16 and INT16; an empty idlocate."""
    rows = [
        (matrix(4, (1, 2), small_element(16, b"s1")),                             # "s1", UTF-8, small
         matrix(6, (1, 4), small_element(2, bytes([1, 2, 3, 250]))),             # uint8 in 4 bytes
         matrix(6, (1, 1), element(9, struct.pack("<d", 0.5)))),
        (matrix(4, (1, 7), element(4, "s12.jpg".encode("utf-16-le"))),           # UINT16 chars
         matrix(6, (0, 0), element(9, b"")),                                      # []
         matrix(6, (1, 1), element(3, struct.pack("<h", -7)))),
        (matrix(4, (1, 9), element(16, b"s300.jpeg")),                            # UTF-8, full format
         matrix(6, (1, 4), element(4, struct.pack("<4H", 300, 2, 65535, 4))),
         matrix(6, (1, 1), element(9, struct.pack("<d", 1.0)))),
    ]
    var = struct_matrix((1, 3), ("imname", "idlocate", "ishard"), [m for row in rows for m in row], name=b"G")
    path = tmp_path / f"hand_{compress}.mat"
    path.write_bytes(mat_file(var, compress))
    return str(path)


@pytest.mark.parametrize("compress", [False, True])
def test_matlab_compact_encodings_read_as_loadmat_reads_them(tmp_path, compress):
    path = hand_written(tmp_path, compress)
    tree = scan_struct(path, "G")
    assert tree is not None
    assert tree.strings(tree.children([0], "imname")) == ["s1", "s12.jpg", "s300.jpeg"]
    values, counts = tree.numbers(tree.children([0], "idlocate"))
    assert counts.tolist() == [4, 0, 4]
    assert values.tolist() == [1.0, 2.0, 3.0, 250.0, 300.0, 2.0, 65535.0, 4.0]
    assert tree.numbers(tree.children([0], "ishard"))[0].tolist() == [0.5, -7.0, 1.0]
    # the hand-written bytes are valid MAT v5: scipy reads the same values
    ref = scipy.io.loadmat(path)["G"].ravel()
    assert [str(r["imname"][0]) for r in ref] == ["s1", "s12.jpg", "s300.jpeg"]
    assert [r["idlocate"].ravel().tolist() for r in ref] == [[1, 2, 3, 250], [], [300, 2, 65535, 4]]


def nested_protocol():
    """A TestG-like struct: Query (1x1 struct) and Gallery (1xK struct, empties for negatives)."""
    rng = np.random.default_rng(3)
    rows = []
    for q in range(5):
        query = structs(("imname", "idlocate", "ishard", "idname"),
                        [(f"s{q}.jpg", rng.uniform(1, 200, (1, 4)), np.zeros((1, 1)), f"p{q}")])
        gallery = structs(("imname", "idlocate", "ishard"),
                          [(f"s{10 * q + j}.jpg", rng.uniform(1, 200, (1, 4)) if j < 2 else np.zeros((1, 0)),
                            np.zeros((1, 1))) for j in range(q + 1)])
        rows.append((query, gallery))
    return structs(("Query", "Gallery"), rows)


@pytest.mark.parametrize("compress", [False, True])
def test_nested_struct_written_by_scipy_equals_loadmat(tmp_path, compress):
    path = str(tmp_path / "testg.mat")
    scipy.io.savemat(path, {"TestG": nested_protocol(), "other": np.arange(3.0)}, do_compression=compress)
    ref = scipy.io.loadmat(path)["TestG"].ravel(order="F")
    tree = scan_struct(path, "TestG")
    query, gallery = tree.children([0], "Query"), tree.children([0], "Gallery")
    assert tree.numel[query].tolist() == [1] * 5 and tree.numel[gallery].tolist() == [1, 2, 3, 4, 5]
    assert tree.strings(tree.children(query, "idname")) == [str(r["Query"][0, 0]["idname"][0]) for r in ref]
    qvalues, _ = tree.numbers(tree.children(query, "idlocate"))
    np.testing.assert_array_equal(qvalues, np.concatenate([r["Query"][0, 0]["idlocate"].ravel() for r in ref]))
    gnames = [str(x[0]) for r in ref for x in r["Gallery"]["imname"].ravel(order="F")]
    assert tree.strings(tree.children(gallery, "imname")) == gnames
    gboxes = [x.ravel() for r in ref for x in r["Gallery"]["idlocate"].ravel(order="F")]
    values, counts = tree.numbers(tree.children(gallery, "idlocate"))
    assert counts.tolist() == [len(b) for b in gboxes] == [4, 4, 4, 4, 4, 0, 4, 4, 0, 0, 4, 4, 0, 0, 0]
    np.testing.assert_array_equal(values, np.concatenate(gboxes))
    assert tree.children(query, "no_such_field") is None


def test_layouts_it_does_not_read_give_none(tmp_path):
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = "a", "b"
    cases = {"cells": structs(("imname",), [(cells,)]),
             "complex": structs(("idlocate",), [(np.array([[1 + 2j]]),)])}
    for key, value in cases.items():
        path = str(tmp_path / f"{key}.mat")
        scipy.io.savemat(path, {key: value})
        assert scan_struct(path, key) is None, key
    path = str(tmp_path / "ok.mat")
    scipy.io.savemat(path, {"ok": nested_protocol()})
    assert scan_struct(path, "missing_key") is None
    assert scan_struct(str(tmp_path / "absent.mat"), "ok") is None
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(data[:len(data) // 2])
    assert scan_struct(str(truncated), "ok") is None
    big_endian = tmp_path / "big_endian.mat"
    big_endian.write_bytes(data[:126] + b"MI" + data[128:])
    assert scan_struct(str(big_endian), "ok") is None


def test_cuhk_protocol_goes_through_the_scan_and_equals_the_loadmat_reading(tmp_path, monkeypatch):
    from galw.data import cuhk_sysu

    roots = [write_cuhk_sysu(str(tmp_path / name)) for name in ("scan", "loadmat")]
    scanned = CUHKSYSU(roots[0])._scan_protocol("TestG100")
    read = CUHKSYSU(roots[0])._read_protocol("TestG100")
    assert scanned is not None
    assert [(n, b.tolist(), i) for n, b, i in scanned[0]] == [(n, b.tolist(), i) for n, b, i in read[0]]
    for got, want in zip(scanned[1:], read[1:]):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    for root in roots:
        CUHKSYSU(root).records("query")  # the base parse (TestG50 through loadmat), cached
    loaded = []
    real_load_mat = cuhk_sysu.load_mat
    monkeypatch.setattr(cuhk_sysu, "load_mat", lambda path, *a: loaded.append(path) or real_load_mat(path, *a))
    fast = CUHKSYSU(roots[0]).parse_protocol("TestG100")
    assert loaded == []
    monkeypatch.setattr(cuhk_sysu, "scan_struct", lambda *a: None)
    slow = CUHKSYSU(roots[1]).parse_protocol("TestG100")
    assert [os.path.basename(p) for p in loaded] == ["TestG100.mat"]
    for name, column in slow.columns().items():
        np.testing.assert_array_equal(fast.columns()[name], column)
    assert list(fast) == list(slow) and len(fast) == 2
