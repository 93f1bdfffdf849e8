"""galw.compat: closes the pure-Python detectron2 gaps and is a no-op on an official build."""
import subprocess
import sys
import textwrap

import pytest

from galw import compat


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


def test_noop_when_compiled_ops_exist():
    """Simulate an official build: a real ``detectron2._C`` is importable before galw."""
    result = _run(
        """
        import sys, types
        sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")  # the 'compiled' ops
        from PIL import Image
        had_linear = hasattr(Image, "LINEAR")
        import galw
        from galw import compat
        assert compat.has_compiled_ops()
        assert type(sys.modules["detectron2._C"]) is types.ModuleType
        print(repr((compat.APPLIED, hasattr(Image, "LINEAR") == had_linear)))
        """
    )
    assert result == "([], True)"


def test_noop_when_compiled_ops_found_by_import_system():
    """Simulate an official build found on disk through importlib (not yet imported)."""
    result = _run(
        """
        import importlib.util, importlib.machinery, sys
        real_find_spec = importlib.util.find_spec
        def find_spec(name, *a, **k):
            if name == "detectron2._C":
                return importlib.machinery.ModuleSpec(name, loader=None, origin="/x/_C.so")
            return real_find_spec(name, *a, **k)
        importlib.util.find_spec = find_spec
        import galw
        from galw import compat
        print(repr((compat.APPLIED, "detectron2._C" in sys.modules)))
        """
    )
    assert result == "([], False)"


def test_apply_is_idempotent():
    first = compat.apply()
    assert compat.apply() == first
