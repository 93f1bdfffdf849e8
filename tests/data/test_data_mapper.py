"""PersonSearchDatasetMapper and the person-search loaders: shapes, transformed boxes, flips."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

import galw
from data_helpers import register, write_cuhk_sysu
from galw.data import PersonSearchDatasetMapper


def _cfg(*opts):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_list(["INPUT.PS.TRAIN_SCALE_MODE", "range",
                         "INPUT.PS.TRAIN_LONG_SIDE_RANGE", (200, 200), "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", (160, 160),
                         "INPUT.PS.TEST_LONG_SIDE", 150, "INPUT.PS.TEST_SHORT_SIDE", 90] + list(opts))
    return cfg


@pytest.fixture
def cuhk(tmp_path):
    root = write_cuhk_sysu(str(tmp_path / "CUHK-SYSU"))
    cleanup = register("t_map", "cuhk_sysu", root)
    yield root
    cleanup()


def _with_attributes(rec):
    for i, a in enumerate(rec["annotations"]):
        a["attributes"] = [i % 2, 1 - i % 2, -1]
    return rec


def test_train_resize_and_flip_carry_pids_and_attributes(cuhk):
    rec = _with_attributes(DatasetCatalog.get("t_map_train")[0])  # 100x80, boxes [10,10,30,50] pid 0, [40,5,55,35] pid 1
    mapper = PersonSearchDatasetMapper(_cfg("INPUT.PS.HFLIP_PROB", 1.0), is_train=True)
    out = mapper(rec)
    assert out["image"].shape == (3, 160, 200) and out["image"].dtype == torch.uint8
    inst = out["instances"]
    assert inst.image_size == (160, 200)
    # scale 2, then flipped: x -> 200 - x
    assert inst.gt_boxes.tensor.tolist() == [[140.0, 20.0, 180.0, 100.0], [90.0, 10.0, 120.0, 70.0]]
    assert inst.gt_pids.tolist() == [0, 1] and inst.gt_pids.dtype == torch.int64
    assert inst.gt_classes.tolist() == [0, 0]
    assert inst.gt_attributes.tolist() == [[0, 1, -1], [1, 0, -1]] and inst.gt_attributes.dtype == torch.int64
    assert (out["height"], out["width"]) == (80, 100)
    assert rec["annotations"][0]["bbox"] == [10.0, 10.0, 30.0, 50.0]  # the record is not modified


def test_train_without_flip_and_without_attributes(cuhk):
    rec = DatasetCatalog.get("t_map_train")[0]
    out = PersonSearchDatasetMapper(_cfg("INPUT.PS.HFLIP_PROB", 0.0), is_train=True)(rec)
    assert out["instances"].gt_boxes.tensor.tolist() == [[20.0, 20.0, 60.0, 100.0], [80.0, 10.0, 110.0, 70.0]]
    assert not out["instances"].has("gt_attributes")


def test_multiscale_range_is_sampled_within_bounds(cuhk):
    rec = DatasetCatalog.get("t_map_train")[0]
    mapper = PersonSearchDatasetMapper(_cfg("INPUT.PS.TRAIN_LONG_SIDE_RANGE", (100, 300),
                                            "INPUT.PS.TRAIN_SHORT_SIDE_RANGE", (80, 240)), is_train=True)
    sizes = {tuple(mapper(rec)["image"].shape[1:]) for _ in range(8)}
    assert len(sizes) > 1
    for h, w in sizes:
        assert 80 <= h <= 240 and 100 <= w <= 300 and abs(w / h - 1.25) < 0.02


def test_test_mapper_gallery_and_query(cuhk):
    mapper = PersonSearchDatasetMapper(_cfg(), is_train=False)
    g = mapper(DatasetCatalog.get("t_map_gallery")[0])
    # 100x80 into 150x90: scale min(1.5, 1.125) -> 113x90
    assert g["image"].shape == (3, 90, 113)
    assert (g["height"], g["width"]) == (80, 100) and g["file_name"].endswith("s4.jpg") and g["image_id"] == 3
    assert "instances" not in g and "query_instances" not in g
    q = mapper(DatasetCatalog.get("t_map_query")[0])  # query box [10,10,30,50], pid 0
    qi = q["query_instances"]
    assert qi.image_size == (90, 113)
    assert torch.allclose(qi.gt_boxes.tensor, torch.tensor([[11.3, 11.25, 33.9, 56.25]]))
    assert qi.gt_pids.tolist() == [0]


def test_test_mapper_oracle_boxes(cuhk):
    """GT-box oracle: gallery dicts carry their GT boxes at input scale; queries do not."""
    mapper = PersonSearchDatasetMapper(_cfg(), is_train=False, oracle_boxes=True)
    g = mapper(DatasetCatalog.get("t_map_gallery")[0])  # s4: [10,10,30,50], [50,10,70,50]; scale 1.13 x 1.125
    oi = g["oracle_instances"]
    assert oi.image_size == (90, 113) and "instances" not in g
    assert torch.allclose(oi.gt_boxes.tensor, torch.tensor([[11.3, 11.25, 33.9, 56.25], [56.5, 11.25, 79.1, 56.25]]))
    assert "oracle_instances" not in mapper(DatasetCatalog.get("t_map_query")[0])
    assert "oracle_instances" not in PersonSearchDatasetMapper(_cfg(), is_train=False)(DatasetCatalog.get("t_map_gallery")[0])


def test_unreadable_image_in_mapper(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"garbage")
    rec = {"file_name": str(path), "image_id": 0, "height": 10, "width": 10,
           "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": 0}]}
    with pytest.raises(OSError, match="broken.jpg"):
        PersonSearchDatasetMapper(_cfg(), is_train=True)(rec)


def test_train_and_test_loaders(cuhk):
    from galw.data import build_person_search_test_loader, build_person_search_train_loader

    cfg = _cfg("DATASETS.TRAIN", ("t_map_train",), "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0)
    batch = next(iter(build_person_search_train_loader(cfg)))
    assert len(batch) == 2
    for d in batch:
        assert d["instances"].gt_pids.dtype == torch.int64 and d["image"].shape[0] == 3
    queries = list(build_person_search_test_loader(cfg, "t_map_query"))
    assert [len(b) for b in queries] == [1, 1]
    assert [b[0]["query_instances"].gt_pids.tolist() for b in queries] == [[0], [1]]
    assert os.path.basename(queries[1][0]["file_name"]) == "s6.jpg"
