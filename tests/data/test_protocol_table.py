"""ProtocolTable: a CUHK-SYSU protocol as columns, read back as the documented entries."""
import numpy as np
import pytest

from galw.data.protocol_table import COLUMNS, ProtocolTable

ENTRIES = [
    {"query_index": 3, "gallery": [{"image": "a.jpg", "bbox": [1.0, 2.0, 3.0, 4.0]}, {"image": "b.jpg", "bbox": None}]},
    {"query_index": 0, "gallery": []},
    {"query_index": 1, "gallery": [{"image": "b.jpg", "bbox": None}, {"image": "c.jpg", "bbox": [5.0, 6.0, 7.0, 8.0]},
                                   {"image": "a.jpg", "bbox": [0.0, 0.0, 1.0, 1.0]}]},
]


def test_round_trip_and_columns():
    t = ProtocolTable.from_entries(ENTRIES, "TestG2")
    assert list(t) == ENTRIES and t == ENTRIES and len(t) == 3
    assert [t[i] for i in range(3)] == ENTRIES and t[-1] == ENTRIES[-1] and t[1:] == ENTRIES[1:]
    assert t.images.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert t.image_index.tolist() == [0, 1, 1, 2, 0] and t.counts.tolist() == [2, 0, 3]
    assert t.has_box.tolist() == [True, False, False, True, True]
    np.testing.assert_array_equal(t.boxes, [[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 1, 1]])
    again = ProtocolTable.from_columns(t.columns(), "TestG2")
    assert list(again) == ENTRIES and set(t.columns()) == set(COLUMNS) and t.table() is t


def test_inconsistent_columns_are_errors_naming_the_protocol():
    cols = ProtocolTable.from_entries(ENTRIES).columns()
    with pytest.raises(ValueError, match=r"'TestG2'.*counts sum to 5"):
        ProtocolTable.from_columns(dict(cols, image_index=cols["image_index"][:4], has_box=cols["has_box"][:4]),
                                   "TestG2")
    with pytest.raises(ValueError, match=r"'TestG2'.*3 entries with a box, 2 boxes"):
        ProtocolTable.from_columns(dict(cols, boxes=cols["boxes"][:2]), "TestG2")
    with pytest.raises(ValueError, match=r"'TestG2'.*image_index outside the 3 image names"):
        ProtocolTable.from_columns(dict(cols, image_index=cols["image_index"] + 1), "TestG2")
    with pytest.raises(ValueError, match=r"'TestG2'.*columns \['boxes'\] missing"):
        ProtocolTable.from_columns({k: v for k, v in cols.items() if k != "boxes"}, "TestG2")
    with pytest.raises(ValueError, match=r"gallery_protocols\['TestG2'\] entry 0: expected a dict"):
        ProtocolTable.from_entries([("not", "a dict")], "TestG2")
