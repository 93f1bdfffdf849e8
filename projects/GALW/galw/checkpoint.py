"""Checkpoints that survive a crash mid-write, hold only finite tensors, and leave no temporary
file behind a killed writer."""
import fnmatch
import logging
import os
import pickle
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from galw_core.files import atomic_write

__all__ = ["AtomicCheckpointer", "load_array_pickle", "remove_stale_temp_files", "non_finite_tensors"]

logger = logging.getLogger(__name__)

#: Files this project writes through :func:`atomic_write` into a run directory.
ATOMIC_TARGETS = ("*.pth", "last_checkpoint", "galw_*.json")
_TEMP = re.compile(r"^(?P<target>.+)\.tmp\.(?P<pid>\d+)$")


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files are complete or absent, never truncated, never non-finite.

    fvcore writes ``model_*.pth`` in place and then ``last_checkpoint``; a crash in
    between leaves a truncated file that ``--resume`` would try to load. Here the data
    goes to a temporary file first and is renamed into place (atomic on POSIX), and
    ``last_checkpoint`` is replaced the same way. A state holding a NaN or inf tensor (weights,
    GALW sigmas, optimizer state) is refused, so ``last_checkpoint`` keeps naming a usable one.
    On construction, temporary files left by killed writers are removed.
    """

    def __init__(self, model, save_dir="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            remove_stale_temp_files(self.save_dir)

    def _load_file(self, filename):
        """detectron2's reading of a model-zoo ``.pkl`` (d2 format, or Caffe2 blobs), through
        :func:`load_array_pickle`: detectron2's own reader would unpickle anything."""
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)
        data = load_array_pickle(filename)
        if "model" in data and "__author__" in data:
            return data
        data = data.get("blobs", data)
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        bad = non_finite_tensors(data)
        if bad:
            raise FloatingPointError(
                f"Refusing to write {save_file}: {len(bad)} tensor(s) hold NaN or inf: "
                f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; last_checkpoint is unchanged"
            )
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def non_finite_tensors(obj, prefix=""):
    """Dotted names of the floating-point tensors in a (nested) state dict holding NaN or inf."""
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            return [prefix]
        return []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    bad = []
    for k, v in items:
        bad += non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    return bad


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _held_open_by(pid: int, path: str):
    """True/False whether process ``pid`` has ``path`` open; None when /proc cannot tell."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    target = os.path.realpath(path)
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == target:
                return True
        except OSError:
            continue
    return False


def remove_stale_temp_files(directory: str):
    """Remove ``<file>.tmp.<pid>`` files that :func:`atomic_write` left in ``directory`` when its
    process was killed mid-write: only for this project's files (``ATOMIC_TARGETS``), and only when
    process ``pid`` is gone or (a reused pid) does not hold the file open. Returns the removed names
    (logged)."""
    removed = []
    for name in sorted(os.listdir(directory)):
        m = _TEMP.match(name)
        if not m or not any(fnmatch.fnmatchcase(m["target"], p) for p in ATOMIC_TARGETS):
            continue
        path = os.path.join(directory, name)
        pid = int(m["pid"])
        if _pid_alive(pid) and _held_open_by(pid, path) is not False:
            continue  # a live writer (or one /proc cannot rule out)
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(name)
    if removed:
        logger.warning("Removed %d temporary file(s) of interrupted writes in %s: %s", len(removed), directory,
                       ", ".join(removed))
    return removed


#: What a pickle of weights (detectron2 / Caffe2 model zoo .pkl) may build: numpy arrays, dicts.
_ARRAY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode"),
}


def load_array_pickle(path):
    """Unpickle a weights file that may only hold numpy arrays, numbers, strings and containers.

    A ``.pkl`` checkpoint is a file users receive; plain ``pickle.load`` would run whatever code it
    names. Anything beyond arrays is refused with the file and the global it asked for.
    """

    class ArrayUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _ARRAY_PICKLE_GLOBALS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(
                f"{path}: refusing to load '{module}.{name}': a weights .pkl may hold only numpy arrays, "
                "numbers, strings and containers"
            )

    with open(path, "rb") as f:
        return ArrayUnpickler(f, encoding="latin1").load()
