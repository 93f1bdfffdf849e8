"""The export's refusals before any program is built or loaded: missing config or weights files,
unknown formats, a folder without export.json, and onnxruntime missing (its install line named);
the deformable convs' switch to their grid_sample form while exporting to ONNX."""
import json
import re
import sys

import pytest
import torch

from galw.export import _GridSampleDeformConvs, build_inference_model, export_model
from galw.modeling.deform_conv import DeformConv2d
from galw.exported import EXPORT_FORMAT, ONNX_PACKAGES, OnnxProgram, import_onnxruntime, load_exported


def test_missing_config_or_weights_are_named(tmp_path):
    config = tmp_path / "config.yaml"
    with pytest.raises(FileNotFoundError, match=f"config file '{config}' not found"):
        build_inference_model(str(config), str(tmp_path / "model.pth"))
    config.write_text("MODEL:\n  META_ARCHITECTURE: PersonSearch\n")
    with pytest.raises(FileNotFoundError, match=f"weights file '{tmp_path / 'model.pth'}' not found"):
        build_inference_model(str(config), str(tmp_path / "model.pth"))


@pytest.mark.parametrize("formats", [("torch_export", "tflite"), ("torchscript",), ()])
def test_unknown_formats_are_refused_before_exporting(tmp_path, formats):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(f"formats must be among ['torch_export', 'onnx']; got {list(formats)}")):
        export_model(None, None, str(out), None, None, formats=formats)
    assert not out.exists()


def test_a_folder_without_export_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: not an exported model \\(no export.json; write one with "
                                                "tools/export.py\\)"):
        load_exported(str(tmp_path))
    (tmp_path / "export.json").write_text(json.dumps({"formats": ["onnx"]}))
    with pytest.raises(ValueError, match=f"format None, expected '{EXPORT_FORMAT}'"):
        load_exported(str(tmp_path))


def test_missing_onnxruntime_names_the_packages_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what ``import onnxruntime`` meets without it
    message = f"ONNX export and inference need onnxruntime: pip install {ONNX_PACKAGES}"
    with pytest.raises(ImportError, match=message):
        import_onnxruntime()
    with pytest.raises(ImportError, match=message):
        OnnxProgram(str(tmp_path / "gallery.onnx"))
    monkeypatch.undo()
    assert import_onnxruntime().__name__ == "onnxruntime"


class _TwoDeformConvs(torch.nn.Module):
    device = torch.device("cpu")

    def __init__(self, impls):
        super().__init__()
        self.convs = torch.nn.ModuleList(DeformConv2d(4, 4, 3, padding=1, impl=impl) for impl in impls)


@pytest.mark.parametrize("impls, changes", [(("torchvision", "grid_sample"), True), (("grid_sample", "auto"), False)])
def test_deformable_convs_run_grid_sample_while_exporting_to_onnx(impls, changes):
    model = _TwoDeformConvs(impls)
    convs = _GridSampleDeformConvs(model)
    assert convs.changes_any() is changes  # "auto" on CPU with gradients resolves to grid_sample
    with convs:
        assert [m.impl for m in model.convs] == ["grid_sample", "grid_sample"]
    assert [m.impl for m in model.convs] == list(impls)
