"""SynthPS: deterministic from the seed, written in the real layouts, loaded by the real loaders."""
import glob
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from data_helpers import register
from galw.data.synthetic import ATTRIBUTE_NAMES, SIZES, generate, main


def _annotation_bytes(root):
    files = sorted(p for ext in ("mat", "txt", "json") for p in glob.glob(os.path.join(root, "**", f"*.{ext}"),
                                                                        recursive=True))
    return {os.path.relpath(p, root): open(p, "rb").read() for p in files}


@pytest.mark.parametrize("layout", ["prw", "cuhk"])
def test_same_seed_same_bytes(tmp_path, layout):
    generate(layout, str(tmp_path / "a"), seed=3, size="tiny")
    main(["--layout", layout, "--out", str(tmp_path / "b"), "--seed", "3", "--size", "tiny"])
    generate(layout, str(tmp_path / "c"), seed=4, size="tiny")
    a, b, c = (_annotation_bytes(str(tmp_path / k)) for k in "abc")
    assert len(a) > 5 and a == b
    assert a != c


def test_prw_layout_loads_through_real_loader(tmp_path):
    root = str(tmp_path / "SynthPS-PRW")
    counts = generate("prw", root, seed=0, size="tiny")
    spec = SIZES["tiny"]
    cleanup = register("t_syn_prw", "prw", root)
    try:
        train, gallery = DatasetCatalog.get("t_syn_prw_train"), DatasetCatalog.get("t_syn_prw_gallery")
        queries = DatasetCatalog.get("t_syn_prw_query")
        assert len(train) == spec.train_frames and len(gallery) == spec.test_frames
        assert counts["frames"] == spec.train_frames + spec.test_frames and len(queries) == counts["queries"] > 0
        meta = MetadataCatalog.get("t_syn_prw_train")
        # non-contiguous original ids (a gap and 932) remapped to 0..K-1; every identity appears
        assert meta.num_pids == spec.train_ids and 932 in meta.pid_mapping
        assert sorted(meta.pid_mapping.values()) == list(range(spec.train_ids))
        assert meta.attribute_names == ATTRIBUTE_NAMES
        labels = {a["person_id"] for r in train for a in r["annotations"]}
        assert labels == set(range(spec.train_ids)) | {-1}
        for r in train + gallery:
            assert (r["height"], r["width"]) == (spec.height, spec.width) and 1 <= r["camera_id"] <= 6
            for a in r["annotations"]:
                x1, y1, x2, y2 = a["bbox"]
                assert 0 <= x1 < x2 <= spec.width and 0 <= y1 < y2 <= spec.height
                assert len(a["attributes"]) == len(ATTRIBUTE_NAMES) and set(a["attributes"]) <= {0, 1}
        gallery_pids = {(os.path.basename(r["file_name"]), a["person_id"]) for r in gallery for a in r["annotations"]}
        for q in queries:
            pid = q["query"]["person_id"]
            assert (os.path.basename(q["file_name"]), pid) in gallery_pids
            assert sum(1 for _, p in gallery_pids if p == pid) >= 2  # seen in another frame too
        with open(os.path.join(root, "query_info.txt"), "rb") as f:
            assert f.read().count(b"\r\n") == len(queries)
    finally:
        cleanup()


def test_cuhk_layout_loads_through_real_loader(tmp_path):
    root = str(tmp_path / "SynthPS-CUHK")
    counts = generate("cuhk", root, seed=0, size="tiny")
    spec = SIZES["tiny"]
    cleanup = register("t_syn_cuhk", "cuhk_sysu", root)
    try:
        train, gallery = DatasetCatalog.get("t_syn_cuhk_train"), DatasetCatalog.get("t_syn_cuhk_gallery")
        queries = DatasetCatalog.get("t_syn_cuhk_query")
        assert len(train) == spec.train_frames and len(gallery) == spec.test_frames
        assert len(queries) == counts["queries"] > 0
        assert MetadataCatalog.get("t_syn_cuhk_train").num_pids == spec.train_ids
        assert {a["person_id"] for r in train for a in r["annotations"]} == set(range(spec.train_ids)) | {-1}
        protocols = MetadataCatalog.get("t_syn_cuhk_gallery").gallery_protocols
        names = {os.path.basename(r["file_name"]) for r in gallery}
        boxes = {(os.path.basename(r["file_name"]), tuple(a["bbox"])): a["person_id"] for r in gallery
                 for a in r["annotations"]}
        g50 = list(protocols["TestG50"])
        assert [e["query_index"] for e in g50] == list(range(len(queries)))
        for e in g50:
            q = queries[e["query_index"]]
            qname = os.path.basename(q["file_name"])
            assert boxes[(qname, tuple(q["query"]["bbox"]))] == e["query_index"]
            gal = e["gallery"]
            assert len(gal) == min(50, len(gallery) - 1) and qname not in {g["image"] for g in gal}
            npos = sum(g["bbox"] is not None for g in gal)
            assert npos >= 1 and all(g["bbox"] is not None for g in gal[:npos])  # positives first
            for g in gal[:npos]:
                assert g["image"] in names and boxes[(g["image"], tuple(g["bbox"]))] == e["query_index"]
        assert 1 <= len(protocols["Occlusion"]) <= len(queries) and 1 <= len(protocols["Resolution"])
        for a in (a for r in train for a in r["annotations"]):
            assert len(a["attributes"]) == len(ATTRIBUTE_NAMES) and set(a["attributes"]) <= {0, 1}
    finally:
        cleanup()


def test_builtin_synth_names_follow_detectron2_datasets(synthps_tiny, tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = synthps_tiny("prw")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    train = DatasetCatalog.get("synth_prw_train")
    assert train[0]["file_name"].startswith(str(root / "SynthPS-PRW" / "frames"))
    assert MetadataCatalog.get("synth_prw_train").num_pids == SIZES["tiny"].train_ids
    assert MetadataCatalog.get("synth_prw_gallery").query_set == "synth_prw_query"
    # another root: file-derived metadata follows the new files
    other = tmp_path / "other"
    generate("prw", str(other / "SynthPS-PRW"), seed=0, size=SIZES["tiny"].__class__(
        **{**SIZES["tiny"].__dict__, "train_ids": 3}))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(other))
    DatasetCatalog.get("synth_prw_train")
    assert MetadataCatalog.get("synth_prw_train").num_pids == 3
    assert MetadataCatalog.get("synth_prw_train").evaluator_type == "prw"
    assert MetadataCatalog.get("synth_prw_train").attribute_names == list(ATTRIBUTE_NAMES)
    # a root without attributes.json: the earlier root's attribute names do not survive
    os.remove(other / "SynthPS-PRW" / "attributes.json")
    records = DatasetCatalog.get("synth_prw_train")
    assert not any("attributes" in a for r in records for a in r["annotations"])
    assert "attribute_names" not in MetadataCatalog.get("synth_prw_train").as_dict()
    assert MetadataCatalog.get("synth_prw_train").num_pids == 3
