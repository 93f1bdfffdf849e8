"""tools/export.py (default formats: torch.export and ONNX) on the demo's model, ROI-AlignPS* R-18
(synthetic config), run with DeprecationWarning and FutureWarning as errors: both programs give the
eager model's boxes, scores, embeddings and query embeddings within 1e-4 on SynthPS gallery frames, at
image sizes other than the example's and with detection counts that differ between images (zero
and one included); they run in a Python that cannot import detectron2 nor this project; the ONNX files are
plain ONNX; tools/search.py indexes and answers queries with them; bad inputs are named."""
import json
import os

import cv2
import numpy as np
import onnx  # tools/setup.sh installs onnx, onnxscript and onnxruntime in both venvs
import pytest
import torch

from conftest import ROOT
from export_helpers import isolated_site_packages, match_rows, run_isolated
from galw.export import GalleryIndexer, QueryEmbedder, build_inference_model
from galw.exported import CheckedGallery, ExportedProgramRunner, load_exported
from galw.search import models as search_models
from tools_helpers import assert_query_equals_eager_search, load_tool

search = load_tool("search")
pytestmark = pytest.mark.slow

QUERY_BOX = [10, 10, 60, 70]  # inside every gallery image, the wide crop (192x72) included


@pytest.fixture(scope="module")
def exported(exported_demo_model):
    """The demo's model exported with the default formats, once per test run (tests/exported_demo_model.py)."""
    return exported_demo_model


@pytest.fixture(scope="module")
def loaded(exported):
    """Each format's (gallery, query, metadata) from load_exported, loaded once for the module's tests
    (loading the torch.export programs takes about 25 s on one core)."""
    return {fmt: load_exported(exported["out"], fmt) for fmt in ("torch_export", "onnx")}


def test_default_formats_and_metadata(exported):
    meta, out = exported["meta"], exported["out"]
    assert sorted(os.listdir(out)) == ["export.json", "gallery.onnx", "gallery.pt2", "query.onnx", "query.pt2"]
    assert meta["formats"] == ["torch_export", "onnx"] and meta["format"] == "galw-export/2"
    assert meta["programs"]["torch_export"] == {"gallery": "gallery.pt2", "query": "query.pt2"}
    assert sorted(meta["max_abs_diff_on_example"]) == sorted(
        f"{fmt}/{name}" for fmt in ("torch_export", "onnx")
        for name in ("gallery/boxes", "gallery/scores", "gallery/embeddings", "query/embeddings"))
    assert max(meta["max_abs_diff_on_example"].values()) <= 1e-4
    assert json.loads(exported["stdout"].splitlines()[0]) == meta["max_abs_diff_on_example"]


def test_onnx_files_are_plain_onnx(exported):
    out, opset = exported["out"], exported["meta"]["onnx_opset"]
    for name, inputs in (("gallery.onnx", ["image"]), ("query.onnx", ["image", "boxes"])):
        path = os.path.join(out, name)
        with open(path, "rb") as f:
            head = f.read(2)
        assert head[:1] != b"\x80" and head != b"PK", "a pickle or a zip (torch.save) archive, not protobuf"
        model = onnx.load(path)  # protobuf: parsing runs no code
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == inputs
        image_dims = model.graph.input[0].type.tensor_type.shape.dim
        assert image_dims[0].dim_value == 3 and all(d.dim_param for d in image_dims[1:])
        assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}
        assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) == opset
        assert {node.domain for node in model.graph.node} <= {""}, name
        assert not {node.op_type for node in model.graph.node} & {"ATen", "PythonOp"}
    gallery_ops = {node.op_type for node in onnx.load(os.path.join(out, "gallery.onnx")).graph.node}
    assert {"GridSample", "NonMaxSuppression", "RoiAlign", "NonZero", "TopK"} <= gallery_ops


@pytest.mark.parametrize("fmt", ["torch_export", "onnx"])
def test_exported_equals_eager_on_the_synthetic_gallery(exported, loaded, fmt, monkeypatch):
    eager = search.SearchModel(exported["config"], exported["weights"])
    # the module's programs, loaded once (load_exported itself is tested below and by the search tests)
    def programs(out, format):
        assert out == exported["out"]
        return loaded[format]

    monkeypatch.setattr(search_models, "load_exported", programs)
    program = search.ExportedSearchModel(exported["out"], fmt)
    assert program.source["exported_format"] == fmt
    images = search.list_gallery(exported["gallery"])
    assert len(images) == 5
    counts = []
    for path in images:
        e_boxes, e_scores, e_emb = eager.detect(path)
        t_boxes, t_scores, t_emb = program.detect(path)
        assert len(e_boxes) > 0 and t_boxes.shape == e_boxes.shape, path
        counts.append(len(e_boxes))
        torch.testing.assert_close(t_boxes, e_boxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(t_scores, e_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(t_emb, e_emb, atol=1e-4, rtol=0)
        torch.testing.assert_close(program.embed_query(path, QUERY_BOX), eager.embed_query(path, QUERY_BOX),
                                   atol=1e-4, rtol=0)
    assert len(set(counts)) >= 3, counts  # the first image is the example image


def test_search_indexes_and_queries_with_the_onnx_model(exported, tmp_path):
    query = os.path.join(exported["gallery"], "portrait.png")
    box = ["20", "30", "90", "140"]
    eager = search.main(["index", "--config-file", exported["config"], "--weights", exported["weights"],
                         "--gallery", exported["gallery"], "--out", str(tmp_path / "eager.pt")])
    index = search.main(["index", "--exported", exported["out"], "--exported-format", "onnx",
                         "--gallery", exported["gallery"], "--out", str(tmp_path / "onnx.pt")])
    assert (index["exported"], index["exported_format"]) == (os.path.abspath(exported["out"]), "onnx")
    assert index["image_index"].tolist() == eager["image_index"].tolist() and len(index["scores"]) > 5
    for key in ("boxes", "scores", "embeddings"):
        torch.testing.assert_close(index[key], eager[key], atol=1e-4, rtol=0)
    assert_query_equals_eager_search(search, exported, tmp_path / "onnx.pt", query, box, tmp_path)


ISOLATED_RUN = """
import importlib.util, io, json
import numpy as np, onnxruntime as ort, torch, torchvision
assert importlib.util.find_spec("detectron2") is None and importlib.util.find_spec("galw") is None
cases = torch.load(sys.argv[2], weights_only=True)
out = {}
for name in ("gallery", "query"):
    program = torch.export.load(sys.argv[1] + "/" + name + ".pt2").module()
    session = ort.InferenceSession(sys.argv[1] + "/" + name + ".onnx", providers=["CPUExecutionProvider"])
    for case, x in cases.items():
        inputs = (x["image"],) if name == "gallery" else (x["image"], x["boxes"])
        with torch.no_grad():
            got = program(*inputs)
        out[case + "/pt2/" + name] = list(got) if isinstance(got, (tuple, list)) else [got]
        feed = dict(zip([i.name for i in session.get_inputs()], [t.numpy() for t in inputs]))
        out[case + "/onnx/" + name] = [torch.from_numpy(o) for o in session.run(None, feed)]
torch.save(out, sys.argv[3])
print(json.dumps(sys.path))
"""


def test_programs_run_without_detectron2_or_the_project(exported, tmp_path):
    _, model = build_inference_model(exported["config"], exported["weights"])
    frame = cv2.imread(os.path.join(exported["gallery"], "portrait.png"))
    boxes = torch.tensor([[20.0, 10.0, 120.0, 90.0], [5.0, 5.0, 40.0, 60.0]])
    cases = {case: {"image": torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1))), "boxes": boxes}
             for case, bgr in (("portrait", cv2.resize(frame, (192, 256))), ("wide", cv2.resize(frame, (256, 96))))}
    torch.save(cases, tmp_path / "inputs.pt")
    # one child loads each program once and runs every case (loading a .pt2 program takes ~12 s)
    sys_path = json.loads(run_isolated("import sys\n" + ISOLATED_RUN, isolated_site_packages(tmp_path),
                                       exported["out"], tmp_path / "inputs.pt", tmp_path / "outputs.pt", cwd=tmp_path))
    assert not any(p.startswith(os.path.join(ROOT, "projects")) for p in sys_path), sys_path
    got = torch.load(tmp_path / "outputs.pt", weights_only=True)
    for case, x in cases.items():
        with torch.no_grad():
            want = GalleryIndexer(model)(x["image"]), QueryEmbedder(model)(x["image"], x["boxes"])
        assert len(want[0][0]) > 0, case
        for fmt in ("pt2", "onnx"):
            g_boxes, g_scores, g_emb = got[f"{case}/{fmt}/gallery"]
            order = match_rows(want[0][0], g_boxes)
            for field, a, b in zip(("boxes", "scores", "embeddings"), want[0], (g_boxes, g_scores, g_emb)):
                assert (b[order] - a).abs().max() <= 1e-4, (case, fmt, field)
            assert (got[f"{case}/{fmt}/query"][0] - want[1]).abs().max() <= 1e-4, (case, fmt)


def test_zero_and_one_detection(exported, loaded):
    # flat grey images: at 96x256 no location passes the score threshold, at 128x160 one box is kept
    # (torchvision's own nms shape function assumed 2 or more kept boxes)
    _, model = build_inference_model(exported["config"], exported["weights"])
    for size, count in (((96, 256), 0), ((128, 160), 1)):
        image = torch.full((3, *size), 127, dtype=torch.uint8)
        with torch.no_grad():
            want = GalleryIndexer(model)(image)
        assert len(want[0]) == count
        for fmt in ("torch_export", "onnx"):
            got = loaded[fmt][0](image)
            assert [tuple(t.shape) for t in got] == [(count, 4), (count,), (count, 64)], (fmt, size)
            for a, b in zip(want, got):
                torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["torch_export", "onnx"])
def test_bad_inputs_to_the_programs_are_named_or_clipped(exported, loaded, fmt):
    gallery, query, meta = loaded[fmt]
    assert isinstance(gallery, CheckedGallery) and meta["loaded_format"] == fmt
    image = torch.as_tensor(np.ascontiguousarray(cv2.resize(
        cv2.imread(os.path.join(exported["gallery"], "wide.png")), (256, 96)).transpose(2, 0, 1)))
    for bad, error in ((image[:1], ValueError), (image[:, :0], ValueError), (image.float(), TypeError),
                       (image.permute(1, 2, 0), ValueError)):
        with pytest.raises(error, match="image"):
            gallery(bad)
        with pytest.raises(error, match="image"):
            query(bad, [[10.0, 10, 50, 60]])
    with pytest.raises(ValueError, match="no area inside the 256x96 image"):
        query(image, [[300.0, 10, 350, 60]])
    clipped = query(image, [[-20.0, 10, 50, 160]])  # partly outside: clipped to the image
    torch.testing.assert_close(clipped, query(image, [[0.0, 10, 50, 96]]), atol=0, rtol=0)
    assert query(image, torch.zeros((0, 4))).shape == (0, 64)


def test_load_errors_name_what_the_folder_holds(exported, loaded, tmp_path):
    out = tmp_path / "onnx_only"
    out.mkdir()
    (out / "export.json").write_text(json.dumps(dict(exported["meta"], formats=["onnx"])))
    with pytest.raises(ValueError, match=r"holds the formats \['onnx'\], not 'torch_export'"):
        load_exported(str(out), "torch_export")
    (out / "export.json").write_text(json.dumps(dict(exported["meta"], format="galw-export/1")))
    with pytest.raises(ValueError, match="re-export the model with tools/export.py"):
        load_exported(str(out))
    # without a format, the folder's first one (ONNX here: loading it takes a second, torch.export's 25 s)
    for name in ("gallery.onnx", "query.onnx"):
        os.link(os.path.join(exported["out"], name), out / name)
    (out / "export.json").write_text(json.dumps(dict(exported["meta"], formats=["onnx", "torch_export"])))
    assert load_exported(str(out))[2]["loaded_format"] == "onnx"
    assert isinstance(loaded["torch_export"][0].program, ExportedProgramRunner)
