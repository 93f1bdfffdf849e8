"""The colour-histogram baseline: embedding values by hand, and GT boxes + histograms through
the PersonSearchEvaluator on a PRW-layout gallery of real image files."""
import json

import cv2
import numpy as np
import pytest

import galw  # noqa: F401
from galw.evaluation import evaluate_colour_baseline
from galw.evaluation.colour_baseline import HSV_BINS, colour_histogram_embeddings

import eval_helpers as H

RED, GREEN, BLUE, YELLOW, WHITE = (0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 255, 255)  # BGR


def person(img, box, shirt, pants):
    """A box whose upper half is ``shirt`` and lower half ``pants`` (plain colours)."""
    x1, y1, x2, y2 = box
    mid = y1 + (y2 - y1) // 2 + (y2 - y1) // 20  # the torso/legs split (0.55 of the height)
    img[y1:mid, x1:x2] = shirt
    img[mid:y2, x1:x2] = pants


def test_embedding_values_by_hand():
    img = np.zeros((200, 200, 3), np.uint8)
    person(img, (10, 10, 50, 110), RED, BLUE)
    person(img, (100, 10, 140, 110), RED, GREEN)
    e = colour_histogram_embeddings(img, np.array([[10, 10, 50, 110], [100, 10, 140, 110]]))
    dim = int(np.prod(HSV_BINS))
    assert e.shape == (2, 2 * dim)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    # OpenCV HSV: red H=0, blue H=120, green H=60, S=V=255 -> bins (0|5|2, 3, 3) of (8, 4, 4).
    h_bin = lambda hue: hue * HSV_BINS[0] // 180  # noqa: E731
    idx = lambda hue: (h_bin(hue) * HSV_BINS[1] + 3) * HSV_BINS[2] + 3  # noqa: E731
    assert np.flatnonzero(e[0]).tolist() == [idx(0), dim + idx(120)]
    assert np.flatnonzero(e[1]).tolist() == [idx(0), dim + idx(60)]
    np.testing.assert_allclose(e[0][e[0] > 0], 2 ** -0.5, rtol=1e-6)
    assert float(e[0] @ e[1]) == pytest.approx(0.5)  # same torso, other legs


def _write(tmp_path, name, persons):
    img = np.full((240, 320, 3), 90, np.uint8)
    for box, shirt, pants, _ in persons:
        person(img, box, shirt, pants)
    path = str(tmp_path / name)
    cv2.imwrite(path, img)
    return path


def test_gt_boxes_and_histograms_through_the_evaluator(tmp_path):
    from detectron2.config import get_cfg

    # Three identities with distinct clothes over three frames of two cameras (PNG: exact colours).
    frames = {
        "c1s1_000001.png": (1, [((20, 20, 60, 120), RED, BLUE, 0), ((200, 40, 240, 140), GREEN, YELLOW, 1)]),
        "c1s1_000002.png": (1, [((100, 30, 140, 130), RED, BLUE, 0), ((10, 100, 50, 200), WHITE, RED, 2)]),
        "c2s1_000001.png": (2, [((150, 60, 190, 160), GREEN, YELLOW, 1), ((30, 50, 70, 150), WHITE, RED, 2),
                                ((250, 20, 290, 120), RED, BLUE, 0)]),
    }
    gallery, queries = [], []
    for i, (name, (cam, persons)) in enumerate(frames.items()):
        path = _write(tmp_path, name, persons)
        rec = H.record(name, i, [H.anno(box, pid) for box, _, _, pid in persons], camera_id=cam)
        rec.update(file_name=path, height=240, width=320)
        gallery.append(rec)
        if i < 2:  # persons of the first two frames are the queries
            for box, _, _, pid in persons:
                q = H.query_record(name, i, box, pid, camera_id=cam)
                q.update(file_name=path, height=240, width=320)
                queries.append(q)
    name = H.register("prw", gallery, queries)
    cfg = galw.add_galw_config(get_cfg())
    results = evaluate_colour_baseline(cfg, name, str(tmp_path / "inference"))
    # Distinct clothes: every query's matches rank first with similarity 1.
    assert results["search"]["mAP"] == pytest.approx(100.0)
    assert results["search"]["top1"] == 100.0
    assert results["detection"]["recall"] == pytest.approx(100.0)  # GT boxes are the detections
    assert results["detection"]["AP"] == pytest.approx(100.0)
    saved = json.load(open(tmp_path / "inference" / f"search_{name}.json"))
    assert saved["metrics"]["search"] == results["search"]
    hist = saved["similarity_histogram"]
    assert hist["mean_positive"] == pytest.approx(1.0, abs=1e-5)
    assert hist["mean_negative"] < 0.6
    # 4 queries x their positives: person 0 twice, person 1 once, 0 twice, 2 once.
    assert sum(hist["positive"]) == 6


def test_gallery_without_query_set_is_a_clear_error():
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("colour_baseline_no_queries").set(evaluator_type="prw")
    cfg = galw.add_galw_config(get_cfg())
    with pytest.raises(ValueError, match="colour_baseline_no_queries.*no query_set"):
        evaluate_colour_baseline(cfg, "colour_baseline_no_queries", "/nonexistent")
