"""galw.data.id_val: the validation split of a training set by identity (no validation image or
person is trained on), on hand-made records and on the registered tiny SynthPS-PRW."""
import os

import pytest

from galw.data.id_val import held_out_ids, register_id_val, split_by_identity


def _rec(name, cam, pids):
    return {"file_name": f"/d/{name}.jpg", "image_id": name, "height": 10, "width": 10, "camera_id": cam,
            "annotations": [{"bbox": [float(i), 0.0, i + 1.0, 2.0], "person_id": p} for i, p in enumerate(pids)]}


def test_split_on_hand_made_records():
    records = [_rec("a", 1, [0, 1, -1]), _rec("b", 1, [2, 3]), _rec("c", 2, [1, 3]), _rec("d", 3, [1]),
               _rec("e", 1, [0, 2]), _rec("f", 2, [3, -1])]
    assert held_out_ids([0, 1, 2, 3, 1], every=2) == {1, 3}
    train, gallery, queries, num_pids = split_by_identity(records, every=2)
    # images with 1 or 3 go to validation; the rest train with 0, 2 relabelled 0, 1
    assert [r["image_id"] for r in train] == ["e"] and num_pids == 2
    assert [a["person_id"] for a in train[0]["annotations"]] == [0, 1]
    assert [r["image_id"] for r in gallery] == ["a", "b", "c", "d", "f"]
    assert [[a["person_id"] for a in r["annotations"]] for r in gallery] == [[-1, 1, -1], [-1, 3], [1, 3], [1], [3, -1]]
    # per identity its first image in each of up to two cameras: 1 in a (cam 1) and c (cam 2); 3 in b and c
    assert [(q["image_id"], q["query"]["person_id"], q["query"]["bbox"]) for q in queries] == [
        ("a", 1, [1.0, 0.0, 2.0, 2.0]), ("c", 1, [0.0, 0.0, 1.0, 2.0]),
        ("b", 3, [1.0, 0.0, 2.0, 2.0]), ("c", 3, [1.0, 0.0, 2.0, 2.0])]
    assert records[0]["annotations"][0]["person_id"] == 0  # the input is not changed
    # a held-out identity seen once has no query; none at all is an error
    with pytest.raises(ValueError, match="appears in two images"):
        split_by_identity([_rec("a", 1, [0, 1]), _rec("b", 1, [0])], every=2)
    with pytest.raises(ValueError, match="2\\+ training identities"):
        held_out_ids([4])


@pytest.fixture
def base_dataset():
    """Registers ``<prefix>_train`` returning the records it is given; removes it and its splits after."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    prefix, made = "idval_errors", {}

    def register(records):
        made["records"] = records
        if f"{prefix}_train" not in DatasetCatalog.list():
            DatasetCatalog.register(f"{prefix}_train", lambda: made["records"])
            register_id_val(prefix, every=2)
        return prefix

    yield register
    for name in (f"{prefix}_train", *(f"{prefix}_idval_{p}" for p in ("train", "gallery", "query"))):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_a_bad_base_dataset_is_named_with_the_split(base_dataset):
    from detectron2.data import DatasetCatalog

    records = [_rec("a", 1, [0, 1]), _rec("b", 2, [1, 2])]
    del records[1]["annotations"][1]["person_id"]
    prefix = base_dataset(records)
    with pytest.raises(ValueError, match="^idval_errors_idval_gallery \\(the validation split by identity of "
                                         "'idval_errors_train'\\): /d/b.jpg: annotation 1 has person_id '<missing>'; "
                                         "expected every annotation to have an integer person_id"):
        DatasetCatalog.get(f"{prefix}_idval_gallery")
    records[1]["annotations"][1]["person_id"] = "x"
    with pytest.raises(ValueError, match="^idval_errors_idval_train .*annotation 1 has person_id 'x'; expected"):
        DatasetCatalog.get(f"{prefix}_idval_train")
    base_dataset([_rec("a", 1, [0]), _rec("b", 2, [0, -1])])
    with pytest.raises(ValueError, match="^idval_errors_idval_query \\(the validation split by identity of "
                                         "'idval_errors_train'\\): a validation split by identity needs 2\\+ "
                                         "training identities, got 1"):
        DatasetCatalog.get(f"{prefix}_idval_query")
    base_dataset([_rec("a", 1, [0, 1]), _rec("b", 1, [0])])
    with pytest.raises(ValueError, match="^idval_errors_idval_train .*appears in two images; expected at least one"):
        DatasetCatalog.get(f"{prefix}_idval_train")


def test_registered_split_of_tiny_synthps(tiny_synth_prw):
    import numpy as np
    from detectron2.data import DatasetCatalog

    from galw.evaluation.query_galleries import PrwQueryGalleries
    from galw.metadata import current_metadata

    full = DatasetCatalog.get("synth_prw_train")
    train = DatasetCatalog.get("synth_prw_idval_train")
    gallery = DatasetCatalog.get("synth_prw_idval_gallery")
    queries = DatasetCatalog.get("synth_prw_idval_query")
    names = lambda rs: [os.path.basename(r["file_name"]) for r in rs]  # noqa: E731
    # the training images are split in two, none in both
    assert sorted(names(train) + names(gallery)) == sorted(names(full)) and not set(names(train)) & set(names(gallery))
    # tiny: 5 training identities, the last held out (one in ten, at least one); 4 kept, labelled 0..3
    assert current_metadata("synth_prw_train").num_pids == 5
    assert current_metadata("synth_prw_idval_train").num_pids == 4
    train_labels = {a["person_id"] for r in train for a in r["annotations"]} - {-1}
    assert train_labels == {0, 1, 2, 3}
    full_by_name = {os.path.basename(r["file_name"]): r for r in full}
    for r in train:
        assert 4 not in {a["person_id"] for a in full_by_name[os.path.basename(r["file_name"])]["annotations"]}
    assert {a["person_id"] for r in gallery for a in r["annotations"]} == {-1, 4}
    assert len(queries) >= 1 and {q["query"]["person_id"] for q in queries} == {4}
    meta = current_metadata("synth_prw_idval_gallery")
    assert (meta.query_set, meta.evaluator_type) == ("synth_prw_idval_query", "prw")
    # PRW's standard protocol finds every query's identity in another validation image
    index = {n: i for i, n in enumerate(names(gallery))}
    protocol = PrwQueryGalleries(gallery, queries, index, "standard")
    for qi, q in enumerate(queries):
        images, positions, boxes = protocol._one(qi)
        assert positions and index[os.path.basename(q["file_name"])] not in images.tolist()
        assert np.all(np.asarray(boxes)[:, 2] > np.asarray(boxes)[:, 0])
