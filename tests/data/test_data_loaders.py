"""CUHK-SYSU and PRW loaders on fixtures written in the real layouts (with their quirks)."""
import logging
import os

import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from data_helpers import register, write_cuhk_sysu, write_prw
from galw.data import CUHKSYSU, PRW, MatFormatError


def _boxes(rec):
    return [(a["bbox"], a["person_id"]) for a in rec["annotations"]]


@pytest.fixture
def cuhk(tmp_path):
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"))
    cleanup = register("t_cuhk", "cuhk_sysu", root)
    yield root
    cleanup()


@pytest.fixture
def prw(tmp_path):
    root = write_prw(str(tmp_path / "PRW"))
    cleanup = register("t_prw", "prw", root)
    yield root
    cleanup()


def test_cuhk_train_boxes_and_identities(cuhk, caplog):
    with caplog.at_level(logging.WARNING):
        train = DatasetCatalog.get("t_cuhk_train")
    assert [os.path.basename(r["file_name"]) for r in train] == ["s1.jpg", "s2.jpg", "s3.jpg"]
    assert [_boxes(r) for r in train] == [
        [([10.0, 10.0, 30.0, 50.0], 0), ([40.0, 5.0, 55.0, 35.0], 1)],  # w=0 box dropped
        [([5.0, 5.0, 25.0, 45.0], 0)],  # h<0 box dropped
        [([30.0, 10.0, 50.0, 60.0], 1)],
    ]
    assert "dropped 2 boxes with w<=0 or h<=0" in caplog.text
    r = train[0]
    assert (r["height"], r["width"], r["camera_id"], r["image_id"]) == (80, 100, -1, 0)
    assert r["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS and r["annotations"][0]["category_id"] == 0
    assert MetadataCatalog.get("t_cuhk_train").num_pids == 2


def test_cuhk_gallery_query_and_protocols(cuhk):
    gallery = DatasetCatalog.get("t_cuhk_gallery")
    assert [os.path.basename(r["file_name"]) for r in gallery] == ["s4.jpg", "s5.jpg", "s6.jpg"]
    assert [_boxes(r) for r in gallery] == [
        [([10.0, 10.0, 30.0, 50.0], 0), ([50.0, 10.0, 70.0, 50.0], 1)],
        [([5.0, 5.0, 30.0, 55.0], 0)],
        [([20.0, 20.0, 40.0, 60.0], -1), ([60.0, 10.0, 75.0, 45.0], 1)],
    ]
    queries = DatasetCatalog.get("t_cuhk_query")
    assert [(os.path.basename(q["file_name"]), q["query"]["bbox"], q["query"]["person_id"], q["camera_id"])
            for q in queries] == [("s4.jpg", [10.0, 10.0, 30.0, 50.0], 0, -1), ("s6.jpg", [60.0, 10.0, 75.0, 45.0], 1, -1)]
    meta = MetadataCatalog.get("t_cuhk_gallery")
    assert meta.evaluator_type == "cuhk_sysu" and meta.query_set == "t_cuhk_query"
    assert MetadataCatalog.get("t_cuhk_query").gallery_set == "t_cuhk_gallery"
    protocols = meta.gallery_protocols
    assert sorted(protocols) == sorted(["TestG50", "TestG100", "TestG500", "TestG1000", "TestG2000", "TestG4000",
                                        "Occlusion", "Resolution"])
    expected = [
        {"query_index": 0, "gallery": [{"image": "s5.jpg", "bbox": [5.0, 5.0, 30.0, 55.0]},
                                        {"image": "s6.jpg", "bbox": None}]},
        {"query_index": 1, "gallery": [{"image": "s4.jpg", "bbox": [50.0, 10.0, 70.0, 50.0]},
                                        {"image": "s5.jpg", "bbox": None}]},
    ]
    for n in (50, 100, 500, 1000, 2000, 4000):
        assert list(protocols[f"TestG{n}"]) == expected
    assert list(protocols["Occlusion"]) == expected[1:]
    assert list(protocols["Resolution"]) == expected[:1]
    table = protocols["TestG100"].table()  # what the evaluator reads: columns, not entry dicts
    assert type(table).__name__ == "ProtocolTable" and table.counts.tolist() == [2, 2]
    assert table.images[table.image_index].tolist() == ["s5.jpg", "s6.jpg", "s4.jpg", "s5.jpg"]
    assert table.has_box.tolist() == [True, False, True, False]


def test_prw_train_clipping_remapping_cameras(prw, caplog):
    with caplog.at_level(logging.WARNING):
        train = DatasetCatalog.get("t_prw_train")
    assert [(os.path.basename(r["file_name"]), r["camera_id"]) for r in train] == [
        ("c1s1_000010.jpg", 1), ("c2s1_000020.jpg", 2), ("c3s2_000030.jpg", 3)]
    assert [_boxes(r) for r in train] == [
        [([10.0, 10.0, 30.0, 50.0], 0), ([50.0, 5.0, 70.0, 35.0], -1), ([0.0, 20.0, 10.0, 50.0], 2)],
        [([10.0, 10.0, 30.0, 50.0], 1)],  # the w=0 row is dropped
        [([60.0, 30.0, 100.0, 80.0], 2)],  # clipped to the 100x80 image
    ]
    assert "dropped 1 box with w<=0 or h<=0" in caplog.text
    meta = MetadataCatalog.get("t_prw_train")
    assert meta.num_pids == 3 and meta.pid_mapping == {5: 0, 480: 1, 932: 2}
    assert [r["image_id"] for r in train] == [0, 2, 3]


def test_prw_gallery_and_crlf_queries(prw):
    gallery = DatasetCatalog.get("t_prw_gallery")
    assert [(os.path.basename(r["file_name"]), r["camera_id"], _boxes(r)) for r in gallery] == [
        ("c1s1_000040.jpg", 1, [([0.0, 10.0, 20.0, 50.0], 7), ([40.0, 10.0, 60.0, 50.0], -1)]),
        ("c4s1_000050.jpg", 4, [([30.0, 20.0, 50.0, 60.0], 7), ([60.0, 10.0, 80.0, 50.0], 9)]),
    ]
    queries = DatasetCatalog.get("t_prw_query")
    assert [(os.path.basename(q["file_name"]), q["camera_id"], q["query"]["bbox"], q["query"]["person_id"],
             q["image_id"], q["height"], q["width"]) for q in queries] == [
        ("c1s1_000040.jpg", 1, [0.0, 10.0, 20.0, 50.0], 7, 1, 80, 100),
        ("c4s1_000050.jpg", 4, [60.0, 10.0, 80.0, 50.0], 9, 4, 80, 100),
    ]
    assert MetadataCatalog.get("t_prw_gallery").evaluator_type == "prw"


def test_parse_cache_is_used_and_invalidated(tmp_path):
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"))
    first, _ = CUHKSYSU(root).records("train")
    assert os.path.isfile(os.path.join(root, ".galw_cache", "cuhk_sysu_base.npz"))
    cached, _ = CUHKSYSU(root).records("train")
    assert cached == first
    # rewrite pool.mat without s4: s4 becomes a training image
    from data_helpers import cell
    pool_path = os.path.join(root, "annotation", "pool.mat")
    scipy.io.savemat(pool_path, {"pool": cell(["s5.jpg", "s6.jpg"])})
    os.utime(pool_path, ns=(1, 1))
    again, _ = CUHKSYSU(root).records("train")
    assert [os.path.basename(r["file_name"]) for r in again] == ["s1.jpg", "s2.jpg", "s3.jpg", "s4.jpg"]


def test_missing_root_and_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*Expected CUHK-SYSU layout"):
        CUHKSYSU(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="Expected PRW layout"):
        PRW(str(tmp_path / "nowhere"))
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"), images=False)
    os.remove(os.path.join(root, "annotation", "pool.mat"))
    with pytest.raises(FileNotFoundError, match="pool.mat"):
        CUHKSYSU(root).records("train")
    proot = write_prw(str(tmp_path / "PRW"), images=False)
    os.remove(os.path.join(proot, "query_info.txt"))
    with pytest.raises(FileNotFoundError, match="query_info.txt.*Expected PRW layout"):
        PRW(proot).records("query")


def test_malformed_mat_names_file_and_key(tmp_path):
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"))
    path = os.path.join(root, "annotation", "Images.mat")
    scipy.io.savemat(path, {"Imgs": np.zeros((1, 2))})
    with pytest.raises(MatFormatError, match=r"Images.mat: expected key 'Img', found \['Imgs'\]"):
        CUHKSYSU(root).records("train")
    proot = write_prw(str(tmp_path / "PRW"))
    apath = os.path.join(proot, "annotations", "c1s1_000040.jpg.mat")
    scipy.io.savemat(apath, {"box_new": np.zeros((2, 4))})
    with pytest.raises(MatFormatError, match=r"c1s1_000040.jpg.mat: expected an Nx5 array .*box_new.*\(2, 4\)"):
        PRW(proot).records("gallery")
    scipy.io.savemat(apath, {"boxes": np.zeros((2, 5))})
    with pytest.raises(MatFormatError, match="c1s1_000040.jpg.mat: expected key 'box_new' or 'anno_file'"):
        PRW(proot).records("gallery")


def test_unreadable_image_names_the_file(tmp_path):
    root = write_prw(str(tmp_path / "PRW"))
    bad = os.path.join(root, "frames", "c2s1_000020.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(OSError, match="Unreadable image .*c2s1_000020.jpg"):
        PRW(root).records("train")


@pytest.mark.parametrize("kwargs", [{}, {"progressive": True}, {"exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"}])
def test_image_size_from_jpeg_header(tmp_path, kwargs):
    from PIL import Image

    from galw.data.records import image_size

    path = str(tmp_path / "im.jpg")
    Image.new("RGB", (37, 21)).save(path, **kwargs)
    assert image_size(path) == (21, 37)
    png = str(tmp_path / "im.png")
    Image.new("RGB", (5, 9)).save(png)
    assert image_size(png) == (9, 5)


def test_protocol_without_gallery_field_names_file_and_field(tmp_path):
    from data_helpers import structs

    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"), images=False)
    q = structs(("imname", "idlocate", "ishard", "idname"), [("s4.jpg", np.array([[10.0, 10, 20, 40]]), 0, "p1")])
    g = structs(("imname", "ishard"), [("s5.jpg", 0)])
    path = os.path.join(root, "annotation", "test", "train_test", "TestG100.mat")
    scipy.io.savemat(path, {"TestG100": structs(("Query", "Gallery"), [(q, g)])})
    with pytest.raises(MatFormatError, match=r"TestG100.mat:TestG100\(1\).Gallery: expected field 'idlocate'"):
        CUHKSYSU(root).parse_protocol("TestG100")
