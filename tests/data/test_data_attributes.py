"""The attribute labels file: loading, validation and IoU matching to dataset boxes."""
import json
import logging

import pytest
from detectron2.structures import BoxMode

from galw.data import AttributeFileError, attach_attributes, load_attribute_file


def _records():
    anno = lambda b, pid: {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": pid}
    return [
        {"file_name": "/x/a.jpg", "annotations": [anno([0, 0, 10, 20], 0), anno([20, 0, 30, 20], -1)]},
        {"file_name": "/x/b.jpg", "annotations": [anno([5, 5, 15, 25], 1)]},
    ]


def _write(tmp_path, obj):
    path = tmp_path / "attributes.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


GOOD = {"attribute_names": ["hat", "bag"],
        "images": {"a.jpg": [{"bbox": [20.2, 0, 30, 20], "attributes": [1, -1]}],
                   "b.jpg": [{"bbox": [5, 5, 15, 25], "attributes": [0, 1]}]}}


def test_attach_by_iou_and_unknowns(tmp_path, caplog):
    recs = _records()
    with caplog.at_level(logging.INFO):
        names = attach_attributes(recs, _write(tmp_path, GOOD), iou_threshold=0.9)
    assert names == ["hat", "bag"]
    assert [a["attributes"] for a in recs[0]["annotations"]] == [[-1, -1], [1, -1]]
    assert recs[1]["annotations"][0]["attributes"] == [0, 1]
    assert "1 annotated boxes have no entry" in caplog.text


def test_unmatched_file_box_is_an_error(tmp_path):
    bad = {"attribute_names": ["hat"], "images": {"b.jpg": [{"bbox": [6, 7, 15, 25], "attributes": [1]}]}}
    # IoU([6,7,15,25], [5,5,15,25]) = 162/200 = 0.81 < 0.9
    with pytest.raises(AttributeFileError, match=r"attributes.json: box \[6.0, 7.0, 15.0, 25.0\] of image b.jpg"):
        attach_attributes(_records(), _write(tmp_path, bad), iou_threshold=0.9)
    recs = _records()
    attach_attributes(recs, _write(tmp_path, bad), iou_threshold=0.8)
    assert recs[1]["annotations"][0]["attributes"] == [1]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"images": {}}, "expected an object with keys 'attribute_names' and 'images'"),
    ({"attribute_names": [], "images": {}}, "non-empty list of strings"),
    ({"attribute_names": ["hat"], "images": {"a.jpg": [{"bbox": [0, 0, 1], "attributes": [1]}]}},
     r"images\['a.jpg'\]\[0\]: 'bbox' must be 4 numbers"),
    ({"attribute_names": ["hat"], "images": {"a.jpg": [{"bbox": [0, 0, 1, 1], "attributes": [1, 0]}]}},
     "'attributes' must be 1 values"),
    ({"attribute_names": ["hat"], "images": {"a.jpg": [{"bbox": [0, 0, 1, 1], "attributes": [2]}]}},
     "'attributes' must be 1 values"),
    ({"attribute_names": ["hat"], "images": {"a.jpg": [{"bbox": [3, 0, 1, 1], "attributes": [1]}]}},
     "empty bbox"),
])
def test_malformed_files(tmp_path, content, message):
    with pytest.raises(AttributeFileError, match=message):
        load_attribute_file(_write(tmp_path, content))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_attribute_file(str(tmp_path / "nothere.json"))
