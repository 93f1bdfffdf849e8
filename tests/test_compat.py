"""galw_core.compat: closes the pure-Python detectron2 gaps and is a no-op on an official build."""
import subprocess
import sys
import textwrap

import pytest

from galw_core import compat


def _run(code):
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_detectron2_layers_and_modeling_import():
    import detectron2.layers  # noqa: F401
    import detectron2.modeling  # noqa: F401
    from detectron2.modeling import META_ARCH_REGISTRY

    assert "GeneralizedRCNN" in META_ARCH_REGISTRY


@pytest.mark.skipif(compat.has_compiled_ops(), reason="official build: nothing to stand in for")
def test_compiled_op_raises_clear_error():
    import torch
    from detectron2.layers import ROIAlignRotated

    assert "detectron2._C" in compat.APPLIED
    op = ROIAlignRotated((2, 2), spatial_scale=1.0, sampling_ratio=0)
    with pytest.raises(compat.MissingCompiledOpError, match="roi_align_rotated_forward"):
        op(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0, 0.0]]))


@pytest.mark.skipif(compat.has_compiled_ops(), reason="official build: nothing to stand in for")
def test_pillow_alias_present():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    from detectron2.data import transforms as T

    assert T.ResizeShortestEdge(128).interp == Image.BILINEAR


def test_noop_on_official_build():
    """Simulate an official build: the import system finds a compiled ``detectron2._C``."""
    result = _run(
        """
        import importlib.abc, importlib.machinery, sys, types

        class Compiled(types.ModuleType):  # every op exists
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return lambda *a, **k: None

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return Compiled(spec.name)
            def exec_module(self, module):
                pass

        class Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "detectron2._C":
                    return importlib.machinery.ModuleSpec(name, Loader(), origin="/x/_C.so")
                return None

        sys.meta_path.insert(0, Finder())
        from PIL import Image
        # v0.6's Python code reads Image.LINEAR at import; upstream code does not. A
        # sentinel lets this v0.6 code import and shows compat leaves Pillow alone.
        Image.LINEAR = "sentinel"
        import galw
        import detectron2.layers, detectron2.modeling
        from galw_core import compat
        print(repr((
            compat.APPLIED,
            compat.has_compiled_ops(),
            type(sys.modules["detectron2._C"]).__name__,
            Image.LINEAR,
            # compat patched no trainer (galw_core imports detectron2.engine itself)
            sys.modules["detectron2.engine.defaults"].DefaultTrainer.state_dict
            is compat._default_trainer_state_dict,
        )))
        """
    )
    assert result == "([], True, 'Compiled', 'sentinel', False)"


def test_apply_is_idempotent():
    first = compat.apply()
    assert compat.apply() == first


def test_detectron2_export_tracing_adapter_on_every_build():
    """detectron2's deployment route imports on both builds (v0.6's export package needs Caffe2,
    which PyTorch no longer ships) and flattens a model's Instances outputs."""
    import torch
    from detectron2.export import TracingAdapter
    from detectron2.structures import Boxes, Instances

    class Detector(torch.nn.Module):
        def forward(self, inputs):
            image = inputs[0]["image"]
            out = Instances(tuple(image.shape[1:]))
            out.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]) * image.mean())
            out.scores = torch.tensor([0.5])
            return [out]

    image = torch.full((3, 8, 8), 2.0)
    adapter = TracingAdapter(Detector(), [{"image": image}])
    flat = adapter(image)
    assert torch.equal(flat[0], torch.tensor([[2.0, 4.0, 6.0, 8.0]]))
    assert torch.equal(flat[1], torch.tensor([0.5]))
    restored = adapter.outputs_schema(flat)[0]
    assert torch.equal(restored.pred_boxes.tensor, flat[0])


def test_caffe2_exporters_are_named_unavailable_without_caffe2():
    import importlib.util

    import detectron2.export as export

    if importlib.util.find_spec("caffe2") is not None:
        pytest.skip("this environment ships Caffe2")
    with pytest.raises(AttributeError, match=r"Caffe2Tracer"):
        export.Caffe2Tracer  # noqa: B018
