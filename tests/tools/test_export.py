"""tools/export.py: the TorchScript gallery and query programs give the eager model's boxes, scores and
embeddings within 1e-4 on SynthPS gallery frames (and on an image of another shape than the traced one),
run with torch + torchvision alone, and tools/search.py indexes and answers queries with them."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from galw.export import load_exported
from nae_helpers import tiny_nae_cfg
from tools_helpers import assert_query_equals_eager_search, export_on_tiny_gallery, load_tool, run_without_project


search = load_tool("search")
pytestmark = pytest.mark.slow  # 90 s of CPU for the module on the 2-core machine

#: The tiny NAE at the tiny SynthPS frame size (192x144 frames are resized to 256x192).
OPTS = ["INPUT.PS.TEST_SHORT_SIDE", 192, "INPUT.PS.TEST_LONG_SIDE", 256, "MODEL.RPN.POST_NMS_TOPK_TEST", 30,
        "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", 0.0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    # a portrait crop of another shape than the trace image (resized to 192x256, not 256x192)
    return export_on_tiny_gallery(tmp_path_factory.mktemp("export"), tiny_nae_cfg(*OPTS), num_frames=4,
                                  crops={"portrait.png": (slice(None), slice(40, 148))})


def test_export_writes_programs_and_metadata(exported):
    meta = exported["meta"]
    assert sorted(os.listdir(exported["out"])) == ["export.json", "gallery.ts", "query.ts"]
    with open(os.path.join(exported["out"], "export.json")) as f:
        assert json.load(f) == json.loads(json.dumps(meta))
    assert meta["format"] == "galw-export/1" and meta["input_format"] == "BGR"
    assert (meta["test_short_side"], meta["test_long_side"], meta["embedding_dim"]) == (192, 256, 32)
    assert meta["traced_on_size"] == [192, 256] and meta["search_score_thresh"] == 0.0
    assert max(meta["max_abs_diff_on_trace_image"].values()) <= 1e-4


def test_exported_equals_eager_on_the_synthetic_gallery(exported):
    eager = search.SearchModel(exported["config"], exported["weights"])
    traced = search.ExportedSearchModel(exported["out"])
    images = search.list_gallery(exported["gallery"])
    assert len(images) == 5
    for path in images:
        e_boxes, e_scores, e_emb = eager.detect(path)
        t_boxes, t_scores, t_emb = traced.detect(path)
        assert len(e_boxes) > 0 and t_boxes.shape == e_boxes.shape, path
        torch.testing.assert_close(t_boxes, e_boxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(t_scores, e_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(t_emb, e_emb, atol=1e-4, rtol=0)
        box = [10, 20, 60, 130]
        torch.testing.assert_close(traced.embed_query(path, box), eager.embed_query(path, box), atol=1e-4, rtol=0)


def test_search_indexes_and_queries_with_the_exported_model(exported, tmp_path):
    query = os.path.join(exported["gallery"], sorted(os.listdir(exported["gallery"]))[2])
    box = ["30", "20", "90", "140"]
    eager = search.main(["index", "--config-file", exported["config"], "--weights", exported["weights"],
                         "--gallery", exported["gallery"], "--out", str(tmp_path / "eager.pt")])
    index = search.main(["index", "--exported", exported["out"], "--gallery", exported["gallery"],
                         "--out", str(tmp_path / "exported.pt")])
    assert index["exported"] == os.path.abspath(exported["out"]) and "weights" not in index
    assert index["image_index"].tolist() == eager["image_index"].tolist()
    for key in ("boxes", "scores", "embeddings"):
        torch.testing.assert_close(index[key], eager[key], atol=1e-4, rtol=0)
    assert_query_equals_eager_search(search, exported, tmp_path / "exported.pt", query, box, tmp_path)


def test_exported_programs_run_with_torch_and_torchvision_only(exported, tmp_path):
    gallery, query, _ = load_exported(exported["out"])
    image = torch.as_tensor(np.ascontiguousarray(
        cv2.resize(cv2.imread(os.path.join(exported["gallery"], "portrait.png")), (192, 256)).transpose(2, 0, 1)))
    box = torch.tensor([[20.0, 30.0, 120.0, 200.0]])
    torch.save({"image": image, "box": box}, tmp_path / "inputs.pt")
    code = (
        "import sys, torch, torchvision\n"
        "assert 'galw' not in sys.modules and 'detectron2' not in sys.modules\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "g = torch.jit.load(sys.argv[1] + '/gallery.ts')(x['image'])\n"
        "q = torch.jit.load(sys.argv[1] + '/query.ts')(x['image'], x['box'])\n"
        "torch.save({'gallery': list(g), 'query': q}, sys.argv[3])\n"
    )
    run_without_project(code, exported["out"], tmp_path / "inputs.pt", tmp_path / "outputs.pt", cwd=tmp_path)
    got = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with torch.no_grad():
        want = gallery(image), query(image, box)
    assert len(want[0][0]) > 0
    for a, b in zip(got["gallery"], want[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["query"], want[1], atol=1e-5, rtol=0)
