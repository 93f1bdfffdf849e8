"""Bad input catalogue for the datasets: one test per case, each named after it.

Every case is written in the real on-disk layouts (tests/data_helpers.py) and failed on the code
before its fix.

Errors that hide the real error (5)
  - test_zero_byte_train_image_surfaces_unreadable_image: building the Trainer on a train set with a
    0-byte frame gives the loader's OSError naming the image, not "OIM needs the number of
    labeled identities" (MODEL.OIM.NUM_LABELED 0: the size comes from the train set).
  - test_datasets_root_nowhere_surfaces_missing_root: DETECTRON2_DATASETS pointing at a missing
    folder gives the FileNotFoundError naming the dataset root.

Bad boxes (6): non-finite values are rejected, never clipped; every drop is logged naming its file
  - test_prw_nan_x_is_rejected_not_clipped: NaN x in an annotations/*.jpg.mat row (was a
    full-width box [0, y1, W, y2]).
  - test_prw_nan_w_drop_names_file: NaN w (was dropped in a count naming no file).
  - test_prw_nan_pid_is_rejected: NaN pid (was an unlabeled box plus a numpy cast warning).
  - test_prw_degenerate_and_outside_drops_name_files: w <= 0 rows and boxes outside the image.
  - test_prw_nan_query_box_names_line: NaN in query_info.txt is an error naming file and line.
  - test_cuhk_nan_box_is_rejected_naming_images_mat: NaN in an Images.mat idlocate (was kept as a
    NaN box).
  - test_cuhk_nan_train_identity_box_names_train_mat: NaN in a Train.mat scene box.
  - test_cuhk_nan_query_box_names_protocol_file: NaN in a TestG50.mat query box (was a NaN query).
  - test_attributes_error_blames_mat_not_json: with attributes.json, a box rejected from a .mat
    leaves an attribute entry unmatched; the error names the .mat first, not attributes.json.

Parse cache that runs code (7)
  - test_planted_pickle_in_parse_cache_does_not_run: a pickle planted in <root>/.galw_cache
    (under the old and the new cache names; raw, or as an object array inside an .npz) that
    writes a marker file when unpickled: nothing runs, the planted files are named in the log
    and the cache is rebuilt.
  - test_parse_cache_files_load_without_pickle: every cache file loads with
    numpy.load(allow_pickle=False).

Paths (8)
  - test_cache_paths_relative_root_other_cwd_absolute_root: parse with a relative
    DETECTRON2_DATASETS from one cwd, load with an absolute one from another: every image found,
    from the cache.
  - test_cache_survives_moving_dataset_folder: rename and move the dataset folder: every image
    found, from the cache.
"""
import logging
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from data_helpers import (CUHK_IMAGES, CUHK_QUERIES, CUHK_TRAIN, PRW_TRAIN, register, write_cuhk_sysu,
                          write_prw)
from galw.data import CUHKSYSU, PRW, MatFormatError

NAN = float("nan")


def _build_trainer(tmp_path, train):
    """The person-search Trainer on ``train`` with the OIM size left to the train set (NUM_LABELED 0):
    it builds the model, then the train loader, as train_net.py does."""
    from galw.engine import Trainer
    from nae_helpers import tiny_nae_cfg

    return Trainer(tiny_nae_cfg("DATASETS.TRAIN", (train,), "MODEL.OIM.NUM_LABELED", 0,
                                "OUTPUT_DIR", str(tmp_path / "output")))


@pytest.fixture
def registered(tmp_path):
    """Register fixture roots under unique prefixes; removed afterwards."""
    cleanups = []

    def reg(kind, root):
        prefix = f"t_cat{len(cleanups)}_{kind}"
        cleanups.append(register(prefix, kind, root))
        return prefix

    yield reg
    for c in cleanups:
        c()


def _frame(records, name):
    return next(r for r in records if os.path.basename(r["file_name"]) == name)


def _boxes(record):
    return [(a["bbox"], a["person_id"]) for a in record["annotations"]]


def _log_lines(caplog, *words):
    return [r.getMessage() for r in caplog.records if all(w in r.getMessage() for w in words)]


# ---------------------------------------------------------------- 5. errors that hide the real error

def test_zero_byte_train_image_surfaces_unreadable_image(tmp_path, registered):
    root = write_prw(str(tmp_path / "PRW"))
    frame = os.path.join(root, "frames", "c2s1_000020.jpg")
    open(frame, "wb").close()
    prefix = registered("prw", root)
    with pytest.raises(OSError, match=r"Unreadable image .*c2s1_000020\.jpg"):
        _build_trainer(tmp_path, f"{prefix}_train")


def test_datasets_root_nowhere_surfaces_missing_root(tmp_path, monkeypatch):
    nowhere = str(tmp_path / "nowhere")
    monkeypatch.setenv("DETECTRON2_DATASETS", nowhere)
    with pytest.raises(FileNotFoundError, match=f"PRW root {nowhere}/PRW does not exist"):
        _build_trainer(tmp_path, "prw_train")
    with pytest.raises(FileNotFoundError, match=f"CUHK-SYSU root {nowhere}/CUHK-SYSU does not exist"):
        _build_trainer(tmp_path, "cuhk_sysu_train")


# ---------------------------------------------------------------- 6. bad boxes

def _prw_with_row(tmp_path, frame, row_index, row):
    train = {k: (key, [list(r) for r in rows]) for k, (key, rows) in PRW_TRAIN.items()}
    train[frame][1][row_index] = row
    return write_prw(str(tmp_path / "PRW"), train=train)


def test_prw_nan_x_is_rejected_not_clipped(tmp_path, caplog):
    root = _prw_with_row(tmp_path, "c1s1_000010", 0, [5, NAN, 10, 20, 40])
    with caplog.at_level(logging.WARNING):
        records, _ = PRW(root).records("train")
    assert _boxes(_frame(records, "c1s1_000010.jpg")) == [([50.0, 5.0, 70.0, 35.0], -1), ([0.0, 20.0, 10.0, 50.0], 1)]
    mat = os.path.join(root, "annotations", "c1s1_000010.jpg.mat")
    assert _log_lines(caplog, "rejected 1 box", "non-finite", f"{mat} (1)")


def test_prw_nan_w_drop_names_file(tmp_path, caplog):
    root = _prw_with_row(tmp_path, "c3s2_000030", 0, [932, 60, 30, NAN, 60])
    with caplog.at_level(logging.WARNING):
        records, _ = PRW(root).records("train")
    assert _boxes(_frame(records, "c3s2_000030.jpg")) == []
    mat = os.path.join(root, "annotations", "c3s2_000030.jpg.mat")
    assert _log_lines(caplog, "rejected 1 box", "non-finite", f"{mat} (1)")


def test_prw_nan_pid_is_rejected(tmp_path, caplog):
    root = _prw_with_row(tmp_path, "c1s1_000010", 0, [NAN, 10, 10, 20, 40])
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")
        records, mapping = PRW(root).records("train")
    assert _boxes(_frame(records, "c1s1_000010.jpg")) == [([50.0, 5.0, 70.0, 35.0], -1), ([0.0, 20.0, 10.0, 50.0], 1)]
    assert mapping == {480: 0, 932: 1}  # the other pid-5 box (c2s1_000020) has w=0
    mat = os.path.join(root, "annotations", "c1s1_000010.jpg.mat")
    assert _log_lines(caplog, "rejected 1 box", "non-finite", f"{mat} (1)")


def test_prw_degenerate_and_outside_drops_name_files(tmp_path, caplog):
    train = {k: (key, [list(r) for r in rows]) for k, (key, rows) in PRW_TRAIN.items()}
    train["c3s2_000030"][1].append([5, 150, 10, 20, 40])  # x beyond the 100 px wide frame
    root = write_prw(str(tmp_path / "PRW"), train=train)
    with caplog.at_level(logging.WARNING):
        PRW(root).records("train")
    zero_w = os.path.join(root, "annotations", "c2s1_000020.jpg.mat")
    outside = os.path.join(root, "annotations", "c3s2_000030.jpg.mat")
    assert _log_lines(caplog, "dropped 1 box", "w<=0 or h<=0", f"{zero_w} (1)")
    assert _log_lines(caplog, "dropped 1 box", "outside the image", f"{outside} (1)")


def test_prw_nan_query_box_names_line(tmp_path):
    root = write_prw(str(tmp_path / "PRW"), query_info="7 -2.5 10 22.5 40 c1s1_000040\r\n9 nan 10 20 40 c4s1_000050\r\n")
    with pytest.raises(MatFormatError, match=r"query_info.txt:2: .*non-finite"):
        PRW(root).records("query")


def test_cuhk_nan_box_is_rejected_naming_images_mat(tmp_path, caplog):
    boxes = dict(CUHK_IMAGES, **{"s3.jpg": [(30, 10, 20, 50), (5, 5, NAN, 30)]})
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"), boxes=boxes)
    with caplog.at_level(logging.WARNING):
        records, _ = CUHKSYSU(root).records("train")
    assert _boxes(_frame(records, "s3.jpg")) == [([30.0, 10.0, 50.0, 60.0], 1)]
    images_mat = os.path.join(root, "annotation", "Images.mat")
    assert _log_lines(caplog, "rejected 1 box", "non-finite", f"{images_mat} (1)")
    assert _log_lines(caplog, "dropped 2 boxes", "w<=0 or h<=0", f"{images_mat} (2)")


def test_cuhk_nan_train_identity_box_names_train_mat(tmp_path, caplog):
    train = [CUHK_TRAIN[0], ("p2", [("s1.jpg", (40, 5, 15, 30)), ("s3.jpg", (30, NAN, 20, 50))])]
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"), train=train)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")
        records, _ = CUHKSYSU(root).records("train")
    assert _boxes(_frame(records, "s3.jpg")) == [([30.0, 10.0, 50.0, 60.0], -1)]
    train_mat = os.path.join(root, "annotation", "test", "train_test", "Train.mat")
    assert _log_lines(caplog, "1 identity box", "non-finite", f"{train_mat} (1)")


def test_cuhk_nan_query_box_names_protocol_file(tmp_path):
    queries = [CUHK_QUERIES[0], ("s6.jpg", (60, 10, NAN, 35), CUHK_QUERIES[1][2])]
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"), queries=queries)
    with pytest.raises(MatFormatError, match=r"TestG50.mat:TestG50\(2\).Query.idlocate: expected .*finite.*nan"):
        CUHKSYSU(root).records("query")


def test_attributes_error_blames_mat_not_json(tmp_path, registered):
    import json

    root = _prw_with_row(tmp_path, "c1s1_000010", 0, [5, NAN, 10, 20, 40])
    attributes = {"attribute_names": ["hat"], "images": {  # written from the true boxes
        "c1s1_000010.jpg": [{"bbox": [10, 10, 30, 50], "attributes": [1]}],
        "c3s2_000030.jpg": [{"bbox": [60, 30, 100, 80], "attributes": [0]}]}}
    with open(os.path.join(root, "attributes.json"), "w") as f:
        json.dump(attributes, f)
    prefix = registered("prw", root)
    mat = os.path.join(root, "annotations", "c1s1_000010.jpg.mat")
    with pytest.raises(ValueError) as info:
        DatasetCatalog.get(f"{prefix}_train")
    assert str(info.value).startswith(f"{mat}: "), str(info.value)
    assert "non-finite" in str(info.value) and "attributes.json" in str(info.value)


# ---------------------------------------------------------------- 7. parse cache that runs code

class _WritesMarker:
    """Unpickling it writes ``path``: what a crafted cache file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def _load_all(kind, root):
    ds = CUHKSYSU(root) if kind == "cuhk_sysu" else PRW(root)
    out = {split: ds.records(split)[0] for split in ("train", "gallery", "query")}
    if kind == "cuhk_sysu":
        out["TestG100"] = list(ds.parse_protocol("TestG100"))
    return out


@pytest.mark.parametrize("kind", ["cuhk_sysu", "prw"])
def test_planted_pickle_in_parse_cache_does_not_run(tmp_path, caplog, kind):
    write = write_cuhk_sysu if kind == "cuhk_sysu" else write_prw
    root = write(str(tmp_path / "root"))
    expected = _load_all(kind, str(write(str(tmp_path / "clean"))))
    cache = os.path.join(root, ".galw_cache")
    os.makedirs(cache)
    marker = str(tmp_path / "code_ran")
    names = ["cuhk_sysu_base", "cuhk_sysu_TestG100"] if kind == "cuhk_sysu" else ["prw_train", "prw_gallery", "prw_query"]
    planted = []
    for i, name in enumerate(names):
        for ext in (".pkl", ".npz"):  # the old loader's name and the cache's own
            planted.append(os.path.join(cache, name + ext))
            with open(planted[-1], "wb") as f:
                if ext == ".npz" and i > 0:  # a real .npz whose arrays are pickled objects
                    np.savez(f, __key__=np.array([_WritesMarker(marker)], dtype=object))
                else:
                    pickle.dump(("key", _WritesMarker(marker)), f)
    with caplog.at_level(logging.WARNING):
        loaded = _load_all(kind, root)
    assert not os.path.exists(marker)
    assert loaded.keys() == expected.keys()
    for k in loaded:
        assert [{**r, "file_name": os.path.basename(r["file_name"])} if "file_name" in r else r for r in loaded[k]] == \
            [{**r, "file_name": os.path.basename(r["file_name"])} if "file_name" in r else r for r in expected[k]]
    for path in planted:
        assert _log_lines(caplog, path), f"no log line names {path}"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _load_all(kind, root) == loaded
    assert not _log_lines(caplog, "Parsing")  # the rebuilt cache is used
    assert not os.path.exists(marker)


@pytest.mark.parametrize("kind", ["cuhk_sysu", "prw"])
def test_parse_cache_files_load_without_pickle(tmp_path, kind):
    write = write_cuhk_sysu if kind == "cuhk_sysu" else write_prw
    root = write(str(tmp_path / "root"))
    _load_all(kind, root)
    files = sorted(os.listdir(os.path.join(root, ".galw_cache")))
    assert len(files) == (2 if kind == "cuhk_sysu" else 3)
    for name in files:
        with np.load(os.path.join(root, ".galw_cache", name), allow_pickle=False) as data:
            for key in data.files:
                assert data[key].dtype != object


# ---------------------------------------------------------------- 8. paths

def _all_found(records, root):
    return all(os.path.isfile(r["file_name"]) and os.path.commonpath(
        [os.path.abspath(r["file_name"]), os.path.abspath(root)]) == os.path.abspath(root) for r in records)


@pytest.mark.parametrize("subdir, prefix", [("PRW", "prw"), ("CUHK-SYSU", "cuhk_sysu")])
def test_cache_paths_relative_root_other_cwd_absolute_root(tmp_path, monkeypatch, caplog, subdir, prefix):
    write = write_prw if prefix == "prw" else write_cuhk_sysu
    write(str(tmp_path / "work" / "data" / subdir))
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("DETECTRON2_DATASETS", "data")
    first = {s: DatasetCatalog.get(f"{prefix}_{s}") for s in ("train", "gallery", "query")}
    assert all(_all_found(r, os.path.join("data", subdir)) for r in first.values())
    monkeypatch.chdir(tmp_path / "elsewhere")
    absolute = str(tmp_path / "work" / "data")
    monkeypatch.setenv("DETECTRON2_DATASETS", absolute)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = {s: DatasetCatalog.get(f"{prefix}_{s}") for s in ("train", "gallery", "query")}
    assert not _log_lines(caplog, "Parsing")
    for s in again:
        assert len(again[s]) == len(first[s]) > 0
        assert _all_found(again[s], os.path.join(absolute, subdir)), s


@pytest.mark.parametrize("kind", ["prw", "cuhk_sysu"])
def test_cache_survives_moving_dataset_folder(tmp_path, caplog, kind, registered):
    write = write_prw if kind == "prw" else write_cuhk_sysu
    root = write(str(tmp_path / "a" / "dataset"))
    before = {s: DatasetCatalog.get(f"{registered(kind, root)}_{s}") for s in ("train", "gallery", "query")}
    moved = str(tmp_path / "b" / "renamed")
    os.makedirs(os.path.dirname(moved))
    shutil.move(root, moved)
    caplog.clear()
    prefix = registered(kind, moved)
    with caplog.at_level(logging.INFO):
        after = {s: DatasetCatalog.get(f"{prefix}_{s}") for s in ("train", "gallery", "query")}
    assert not _log_lines(caplog, "Parsing")
    for s in after:
        assert len(after[s]) == len(before[s]) > 0
        assert _all_found(after[s], moved), s
        assert [os.path.relpath(r["file_name"], moved) for r in after[s]] == \
            [os.path.relpath(r["file_name"], root) for r in before[s]]
