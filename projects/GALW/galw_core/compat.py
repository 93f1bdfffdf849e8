"""The one place where gaps between detectron2 v0.6 (pure-Python build) and a
modern stack are closed.

Import this before anything imports detectron2 (``galw/__init__`` does). On an
official detectron2 build, i.e. one whose compiled ``detectron2._C`` can be
found, :func:`apply` changes nothing.

Gaps closed on a pure-Python build (PyPI sdist ``pb1-detectron2==0.6``, built
with its C++ extension skipped):

* ``detectron2._C`` is absent but imported at module level by
  ``layers/deform_conv.py``, ``layers/roi_align_rotated.py`` and
  ``structures/rotated_boxes.py``: a stand-in module is registered whose every
  function raises :class:`MissingCompiledOpError` naming the op.
* ``detectron2.export`` imports Caffe2 (removed from PyTorch) unconditionally, so
  ``from detectron2.export import TracingAdapter`` fails: as on current main, where Caffe2 is
  optional (detectron2/export/__init__.py), the package then offers its Caffe2-free part
  (``TracingAdapter``, ``scripting_with_instances``, ``dump_torchscript_IR``) and names the
  Caffe2 exporters as unavailable.
* ``PIL.Image.LINEAR`` was removed in Pillow 10 but is a default argument in
  ``detectron2/data/transforms``: aliased to ``BILINEAR`` (same filter).
* v0.6's ``DefaultTrainer`` checkpoints only the iteration and hook states, so
  ``--resume`` silently restarts SGD momentum (and the AMP grad scaler). As
  upstream did later, its state now holds the inner trainer's under ``_trainer``.

Differences between detectron2 versions that the project meets through helpers here (they
run the same code on every build; nothing is patched):

* ``SimpleTrainer._data_loader_iter`` is an attribute made in the constructor on v0.6 and a
  lazy read-only property on current main: :class:`SharedDataLoader` lets a second train step,
  built by its real constructor, continue the first one's running iterator on both;
  :func:`next_batch` reads it in a ``run_step``.
* Train-step constructor options (main: ``gather_metric_period``, ``precision``, ...; v0.6:
  ``grad_scaler`` only): :func:`train_step_options` copies those of the installed build.
* After-backward hooks exist on main only: :func:`run_after_backward_hooks`.
"""
import functools
import importlib.machinery
import inspect
import importlib.util
import logging
import sys
import types
import warnings

__all__ = [
    "APPLIED",
    "MissingCompiledOpError",
    "SharedDataLoader",
    "apply",
    "has_compiled_ops",
    "next_batch",
    "run_after_backward_hooks",
    "train_step_options",
]

logger = logging.getLogger(__name__)

#: Names of the gaps that :func:`apply` closed in this process (empty on an official build).
APPLIED = []


class MissingCompiledOpError(RuntimeError):
    """A detectron2 op that needs the compiled ``detectron2._C`` extension was called."""


_NOT_BUILT = "not built (pure-Python detectron2, galw_core.compat stand-in)"


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: ops raise; build introspection answers honestly."""

    def get_compiler_version(self):
        return _NOT_BUILT

    def get_cuda_version(self):
        return _NOT_BUILT

    def has_cuda(self):
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args, **kwargs):
            raise MissingCompiledOpError(
                f"detectron2._C.{name} is a compiled detectron2 op, and this detectron2 was "
                "installed without its C++ extension (pure-Python pb1-detectron2==0.6). "
                "Use an alternative that needs no compiled op (e.g. torchvision.ops.DeformConv2d, "
                "torchvision.ops.nms, COCOEvaluator(use_fast_impl=False)) or install an official "
                "detectron2 build."
            )

        _missing.__name__ = name
        return _missing


#: What ``detectron2.export`` offers without Caffe2, and the module that defines each name.
_CAFFE2_FREE_EXPORT = {
    "TracingAdapter": "flatten",
    "scripting_with_instances": "torchscript",
    "dump_torchscript_IR": "torchscript",
}


class _Caffe2FreeExport(types.ModuleType):
    """Stand-in for the ``detectron2.export`` package of a build whose ``__init__`` needs Caffe2:
    its submodules import as usual, its Caffe2-free names load on first use."""

    def __getattr__(self, name):
        if name in _CAFFE2_FREE_EXPORT:
            module = importlib.import_module(f"detectron2.export.{_CAFFE2_FREE_EXPORT[name]}")
            value = getattr(module, name)
            setattr(self, name, value)
            return value
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"detectron2.export.{name} needs Caffe2, which PyTorch no longer ships; export with "
            "detectron2.export.TracingAdapter + torch.export or torch.onnx.export(dynamo=True) instead"
        )


def _caffe2_free_export():
    """Register :class:`_Caffe2FreeExport` as ``detectron2.export`` when Caffe2 is absent."""
    if importlib.util.find_spec("caffe2") is not None or "detectron2.export" in sys.modules:
        return False
    spec = importlib.util.find_spec("detectron2.export")
    if spec is None:
        return False
    module = _Caffe2FreeExport("detectron2.export")
    module.__spec__ = spec
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__all__ = sorted(_CAFFE2_FREE_EXPORT)
    sys.modules["detectron2.export"] = module
    return True


def has_compiled_ops() -> bool:
    """True when a real compiled ``detectron2._C`` can be found (official build)."""
    _C = sys.modules.get("detectron2._C")
    if _C is not None:
        return not isinstance(_C, _MissingCompiledOps)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except ModuleNotFoundError:
        return False


def _default_trainer_state_dict(self):
    from detectron2.engine.train_loop import TrainerBase

    ret = TrainerBase.state_dict(self)
    ret["_trainer"] = self._trainer.state_dict()
    return ret


def _default_trainer_load_state_dict(self, state_dict):
    from detectron2.engine.train_loop import TrainerBase

    TrainerBase.load_state_dict(self, state_dict)
    if "_trainer" in state_dict:
        self._trainer.load_state_dict(state_dict["_trainer"])


#: Modules that call ``torch.jit.script`` at import time, which the pinned torch (2.14) answers
#: with a FutureWarning per call: detectron2's ``@torch.jit.script`` (modeling/box_regression.py:20) and
#: fvcore's ``torch.jit.script(sigmoid_focal_loss)`` (nn/focal_loss.py:52), imported by detectron2's
#: hooks. A user cannot act on it, so :func:`_import_jit_scripting_modules` imports exactly these
#: with exactly that message ignored; any other ``torch.jit.script`` call still warns.
_JIT_SCRIPTING_MODULES = ("fvcore.nn.focal_loss", "detectron2.modeling.box_regression")


def _import_jit_scripting_modules():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        for name in _JIT_SCRIPTING_MODULES:
            importlib.import_module(name)
    _quiet_anchor_grid()


#: detectron2's anchor generator calls ``torch.meshgrid`` without ``indexing`` (anchor_generator.py:48 in
#: v0.6, :52 on main), which torch answers with a UserWarning in every training and inference; the
#: default it warns about, "ij", is what the generator means. Only that call is silenced.
_MESHGRID_WARNING = r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"


def _quiet_anchor_grid():
    module = importlib.import_module("detectron2.modeling.anchor_generator")
    original = module._create_grid_offsets
    if getattr(original, "_galw_quiet", False):
        return

    @functools.wraps(original)
    def create_grid_offsets(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MESHGRID_WARNING, category=UserWarning)
            return original(*args, **kwargs)

    create_grid_offsets._galw_quiet = True
    module._create_grid_offsets = create_grid_offsets


def apply() -> list:
    """Close the known gaps if this is a pure-Python detectron2; return what was applied."""
    if APPLIED or has_compiled_ops():
        _import_jit_scripting_modules()
        return list(APPLIED)
    stub = _MissingCompiledOps("detectron2._C")
    stub.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
    sys.modules["detectron2._C"] = stub
    APPLIED.append("detectron2._C")
    if _caffe2_free_export():
        APPLIED.append("detectron2.export without Caffe2")
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        APPLIED.append("PIL.Image.LINEAR")
    _import_jit_scripting_modules()
    from detectron2.engine import defaults

    if "state_dict" not in vars(defaults.DefaultTrainer):
        defaults.DefaultTrainer.state_dict = _default_trainer_state_dict
        defaults.DefaultTrainer.load_state_dict = _default_trainer_load_state_dict
        APPLIED.append("DefaultTrainer.state_dict")
    logger.debug("galw_core.compat applied: %s", APPLIED)
    return list(APPLIED)


class SharedDataLoader:
    """Stands for ``step``'s data loader in another train step's constructor: iterating it yields
    ``step``'s running iterator (v0.6 takes it in the constructor, main on first use), so the
    data stream continues and no second loader iterator (nor its workers) is started."""

    def __init__(self, step):
        self.step = step
        self.data_loader = step.data_loader

    def __iter__(self):
        return self.step._data_loader_iter

    def __len__(self):
        return len(self.data_loader)


def next_batch(step):
    """The next batch of a train step's running data iterator (an attribute or a property)."""
    return next(step._data_loader_iter)


def train_step_options(step) -> dict:
    """The constructor options of ``step``'s detectron2 class on this build (besides model, data
    loader and optimizer) with ``step``'s values, to build its counterpart with the same ones."""
    from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer

    base = AMPTrainer if isinstance(step, AMPTrainer) else SimpleTrainer
    names = [n for n in inspect.signature(base.__init__).parameters if n not in ("self", "model", "data_loader", "optimizer")]
    return {n: getattr(step, n) for n in names if hasattr(step, n)}


def run_after_backward_hooks(step):
    """Call the hooks' ``after_backward`` where detectron2 has them (main; not v0.6)."""
    after_backward = getattr(step, "after_backward", None)
    if after_backward is not None:
        after_backward()
