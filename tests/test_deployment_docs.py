"""Every Python snippet of the deployment docs (projects/GALW/docs/export.md) runs as written, in a folder
laid out as the docs say: a run's output/run/config.yaml and model_final.pth (the demo's model, ROI-AlignPS*
R-18 at its seeded random init, with a GALW run's loss-weighting state), photo.jpg at the test size, and the
gallery program tools/export.py wrote (.pt2 and ONNX, tests/exported_demo_model.py) in exported/; each
snippet's results are checked against the eager model, the TracingAdapter program's also at another
image size (detectron2's deployment route, ``galw.export.tracing_inference``)."""
import logging
import os
import re
import textwrap

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from galw.checkpoint import AtomicCheckpointer
from galw.export import GalleryIndexer, _GridSampleDeformConvs, build_inference_model

pytestmark = pytest.mark.slow

DOC = os.path.join(ROOT, "projects", "GALW", "docs", "export.md")


def python_snippets(text):
    """The ```python blocks of a Markdown text (list items' indented ones too), dedented."""
    return [textwrap.dedent(m.group(2)) for m in re.finditer(r"^( *)```python\n(.*?)^\1```", text, flags=re.M | re.S)]


SNIPPETS = python_snippets(open(DOC).read())
ONNX_SNIPPETS = [s for s in SNIPPETS if "onnxruntime" in s]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, exported_demo_model):
    exported = exported_demo_model
    root = tmp_path_factory.mktemp("deployment")
    cfg, model = build_inference_model(exported["config"], exported["weights"])
    run = root / "output" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.dump())
    model.galw_weighting = nn.Module()  # what a GALW training's checkpoint holds beside the model
    model.galw_weighting.log_sigma = nn.Parameter(torch.zeros(3))
    model.galw_weighting.register_buffer("k", torch.ones(3))
    AtomicCheckpointer(model, save_dir=str(run)).save("model_final")
    del model.galw_weighting
    # the test size (export.json: test_short_side x test_long_side), so every snippet runs at scale 1
    meta = exported["meta"]
    bgr = np.random.default_rng(0).integers(0, 256, (meta["test_short_side"], meta["test_long_side"], 3), dtype=np.uint8)
    cv2.imwrite(str(root / "photo.jpg"), bgr)
    bgr = cv2.imread(str(root / "photo.jpg"))  # the decoded JPEG the snippets read
    image = torch.from_numpy(bgr).permute(2, 0, 1).contiguous()
    with torch.no_grad(), _GridSampleDeformConvs(model):  # the kernel the programs were exported with
        eager = GalleryIndexer(model)(image)
    (root / "exported").mkdir()
    for name in ("gallery.pt2", "gallery.onnx"):
        os.link(os.path.join(exported["out"], name), root / "exported" / name)
    return {"root": root, "eager": eager}


def _run(snippet, root, monkeypatch):
    monkeypatch.chdir(root)
    namespace = {"__name__": "__snippet__"}
    exec(compile(snippet, DOC, "exec"), namespace)
    return namespace


def test_the_docs_hold_the_snippets():
    assert len(SNIPPETS) == 4 and len(ONNX_SNIPPETS) == 1
    assert sum("DefaultPredictor" in s for s in SNIPPETS) == 1 and sum("TracingAdapter" in s for s in SNIPPETS) == 1
    assert python_snippets("a\n  ```python\n  x = 1\n    y\n  ```\n```python\nz\n```\n") == ["x = 1\n  y\n", "z\n"]


def test_torch_snippets_run_as_written(deployment, monkeypatch, caplog):
    root, (boxes, scores, embeddings) = deployment["root"], deployment["eager"]
    assert len(boxes) > 5
    caplog.set_level(logging.INFO)
    done = 0
    for snippet in SNIPPETS:
        if snippet in ONNX_SNIPPETS:
            continue
        with torch.no_grad():
            ns = _run(snippet, root, monkeypatch)
        if "DefaultPredictor" in snippet:  # photo.jpg at the config's test size: scale 1
            out = ns["out"]
            torch.testing.assert_close(out.pred_boxes.tensor, boxes, atol=1e-4, rtol=0)
            torch.testing.assert_close(out.embeddings, embeddings, atol=1e-5, rtol=0)
        elif "TracingAdapter" in snippet:
            got = ns["instances"]
            torch.testing.assert_close(got.pred_boxes.tensor, boxes, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.scores, scores, atol=1e-6, rtol=0)
            torch.testing.assert_close(got.embeddings, embeddings, atol=1e-5, rtol=0)
            assert (root / "model.pt2").stat().st_size > 1e6
            assert any(r.getMessage().startswith("Not loaded: galw_weighting.k, galw_weighting.log_sigma")
                       for r in caplog.records)
            _assert_program_follows_the_image_size(ns)
        else:
            for a, b in zip((boxes, scores, embeddings), (ns["boxes"], ns["scores"], ns["embeddings"])):
                torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
        done += 1
    assert done == len(SNIPPETS) - len(ONNX_SNIPPETS)


def _assert_program_follows_the_image_size(ns):
    """The TracingAdapter snippet's program at another image size (its size is dynamic) rebuilds, through
    the adapter's schema, the eager model's boxes, scores and embeddings at that size."""
    schema = ns["adapter"].outputs_schema
    assert schema.schemas[0].keys == ["instances"]
    assert schema.schemas[0].schemas[0].keys == ["embeddings", "pred_boxes", "scores"]
    image = torch.randint(0, 256, (3, 200, 136), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = ns["model"]([{"image": image}])[0]["instances"]  # the model's own forward, at scale 1
        got = schema(ns["program"].module()(image))[0]["instances"]
    assert tuple(got.image_size) == (200, 136)
    assert len(eager) > 5 and len(got) == len(eager), (len(got), len(eager))
    torch.testing.assert_close(got.pred_boxes.tensor, eager.pred_boxes.tensor, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.scores, eager.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.embeddings, eager.embeddings, atol=1e-5, rtol=0)


def test_onnx_snippet_runs_as_written(deployment, monkeypatch):
    root, (boxes, scores, embeddings) = deployment["root"], deployment["eager"]
    for snippet in ONNX_SNIPPETS:
        ns = _run(snippet, root, monkeypatch)
        for a, b in zip((boxes, scores, embeddings), (ns["boxes"], ns["scores"], ns["embeddings"])):
            assert isinstance(b, np.ndarray)
            np.testing.assert_allclose(b, a.numpy(), atol=1e-3, rtol=0)
