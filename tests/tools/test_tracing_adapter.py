"""detectron2's deployment route (tools/deploy/export_model.py, ``export_tracing``): the person-search model
through ``detectron2.export.TracingAdapter`` with ``galw.export.tracing_inference``, exported by
``torch.export`` with a dynamic image size, gives the eager model's boxes, scores and embeddings as
flattened ``Instances`` that the adapter's schema rebuilds; NAE's detector does not export."""
import os

import pytest
import torch
from torch.export import Dim

import galw
from conftest import CONFIG_DIR
from detectron2.config import get_cfg
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from detectron2.structures import Instances
from galw.export import tracing_inference

pytestmark = pytest.mark.slow

OPTS = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.OIM.NUM_LABELED", "3",
        "MODEL.ALIGNPS.SCORE_THRESH_TEST", "0.011", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
SIDES = ({1: Dim("height", min=64, max=4096), 2: Dim("width", min=64, max=4096)},)


def _model(config):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config))
    cfg.merge_from_list(OPTS)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _export(adapter, image):
    with torch.no_grad():
        return torch.export.export(adapter, (image,), dynamic_shapes=(SIDES,), strict=False,
                                   prefer_deferred_runtime_asserts_over_guards=True)


def test_roi_alignps_exports_through_tracing_adapter():
    model = _model("alignps/roi_alignps_R18_synth_cpu.yaml")
    example = _image(192, 256, 1)
    adapter = TracingAdapter(model, [{"image": example}], tracing_inference)
    program = _export(adapter, example).module()
    schema = adapter.outputs_schema
    assert schema.schemas[0].keys == ["instances"]
    assert schema.schemas[0].schemas[0].keys == ["embeddings", "pred_boxes", "scores"]
    for h, w, seed in ((192, 256, 1), (200, 136, 2)):
        image = _image(h, w, seed)
        with torch.no_grad():
            eager = model([{"image": image}])[0]["instances"]  # the model's own forward, at scale 1
            flat = program(image)
        got = schema(flat)[0]["instances"]
        assert isinstance(got, Instances) and tuple(got.image_size) == (h, w)
        assert len(eager) > 5 and len(got) == len(eager), (h, w, len(got), len(eager))
        torch.testing.assert_close(got.pred_boxes.tensor, eager.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.scores, eager.scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.embeddings, eager.embeddings, atol=1e-5, rtol=0)


def test_tracing_inference_takes_one_image():
    with pytest.raises(ValueError, match="one input"):
        tracing_inference(None, [{"image": _image(64, 64, 0)}, {"image": _image(64, 64, 0)}])
    with pytest.raises(ValueError, match=r"keys \[\['image', 'query_instances'\]\]"):
        tracing_inference(None, [{"image": _image(64, 64, 0), "query_instances": None}])


def test_nae_detector_does_not_export():
    # detectron2's RPN selects its proposals by branches on tensor values (find_top_rpn_proposals)
    model = _model("nae/nae_R18_synth_cpu.yaml")
    example = _image(96, 128, 0)
    adapter = TracingAdapter(model, [{"image": example}], tracing_inference)
    with pytest.raises(Exception, match="data-dependent|GuardOnDataDependentSymNode|Could not guard"):
        _export(adapter, example)
