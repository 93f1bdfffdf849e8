"""detectron2's deployment route (tools/deploy/export_model.py, ``export_tracing``): ``galw.export.tracing_inference``
takes one image, and NAE's detector does not export through ``detectron2.export.TracingAdapter``. ROI-AlignPS*
exports so and equals the eager model at two image sizes: the deployment docs' snippet, run as written by
tests/test_deployment_docs.py."""
import os

import pytest
import torch
from torch.export import Dim

import galw
from conftest import CONFIG_DIR
from detectron2.config import get_cfg
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
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
