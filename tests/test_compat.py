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
