"""Checkpoints that survive a crash mid-write, hold only finite, non-exploded tensors, carry their
SHA-256 and load without running code; ``--resume`` skips a damaged one for the newest intact one."""
import fnmatch
import logging
import os
import pickle
import re

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer
from galw_core.content_hash import recorded_sha256, sha256_of, sidecar_path, torch_save_with_sha256
from galw_core.files import atomic_write

__all__ = [
    "AtomicCheckpointer", "CheckpointError", "EXPLODED", "LAST_CHECKPOINT", "exploded_tensors", "load_array_pickle",
    "load_checkpoint_file", "non_finite_tensors", "remove_periodic_checkpoints", "remove_stale_temp_files",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

#: The file in which fvcore's Checkpointer names a directory's newest checkpoint (checkpoint.py, tag_last_checkpoint).
LAST_CHECKPOINT = "last_checkpoint"
#: Files this project writes through :func:`atomic_write` into a run directory.
ATOMIC_TARGETS = ("*.pth", "*.pth.sha256", LAST_CHECKPOINT, "galw_*.json")
_TEMP = re.compile(r"^(?P<target>.+)\.tmp\.(?P<pid>\d+)$")
#: detectron2's PeriodicCheckpointer names its checkpoints model_{iteration:07d}.pth (hooks.py).
_PERIODIC = re.compile(r"^model_\d{7}\.pth$")
FINAL_CHECKPOINT = "model_final.pth"
#: A weight or buffer beyond +-EXPLODED means a diverged training: trained detectors' weights stay
#: within +-1e3 and their BatchNorm running variances within 1e8, while a diverging one grows by
#: orders of magnitude per iteration, through float32's finite range (3.4e38) towards inf.
EXPLODED = 1e12
#: State-dict prefix of the GALW loss weighting, a submodule of the model during training only
#: (galw_core/train_step.py, ``WEIGHTING_ATTR`` and ``attach_weighting``).
WEIGHTING_PREFIX = "galw_weighting."


def log_skipped_weighting(log, keys):
    """The one line that says why a checkpoint's ``galw_weighting.*`` keys are not loaded."""
    log.info("Not loaded: %s, the GALW loss weighting's state (its learned task uncertainties) that training "
             "saves with the model; the loss weighting only scales the training losses, so inference does not "
             "need it (the model is complete without it)", ", ".join(sorted(keys)))


#: Training checkpoints ``--resume`` may fall back to (detectron2's PeriodicCheckpointer names).
_RESUMABLE = "model_*.pth"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: empty, truncated, damaged, or holding code."""


class _WeightsOnlyLoad(Checkpointer):
    """fvcore's ``Checkpointer._load_file`` as :func:`load_checkpoint_file`. Listed after
    DetectionCheckpointer in :class:`AtomicCheckpointer`'s bases, so that detectron2's own call of
    ``super()._load_file`` (``_torch_load`` on detectron2 main) lands here."""

    def _load_file(self, f):
        return load_checkpoint_file(f)


class AtomicCheckpointer(DetectionCheckpointer, _WeightsOnlyLoad):
    """DetectionCheckpointer whose files are complete or absent, never truncated, never non-finite
    or exploded, each with its SHA-256, and loaded without running code.

    fvcore writes ``model_*.pth`` in place and then ``last_checkpoint``; a crash in
    between leaves a truncated file that ``--resume`` would try to load. Here the data
    goes to a temporary file first and is renamed into place (atomic on POSIX), then its SHA-256
    to ``<file>.sha256``, and ``last_checkpoint`` is replaced the same way. A state holding a NaN or
    inf tensor (weights, GALW sigmas, optimizer state), or weights beyond +-:data:`EXPLODED`, is
    refused, so ``last_checkpoint`` keeps naming a usable one. Loading checks the SHA-256 and reads
    with ``weights_only=True``; ``resume_or_load`` falls back past damaged checkpoints. On
    construction, temporary files left by killed writers are removed.
    """

    def __init__(self, model, save_dir="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            remove_stale_temp_files(self.save_dir)

    def _load_file(self, filename):
        """detectron2's reading of a model-zoo ``.pkl`` (d2 format, or Caffe2 blobs), through
        :func:`load_array_pickle` (detectron2's own reader would unpickle anything), and of a pycls
        ``.pyth``, through :func:`load_checkpoint_file`; other files as detectron2 reads them, with
        :func:`load_checkpoint_file` for the ``torch.load``."""
        if filename.endswith(".pyth"):
            data = load_checkpoint_file(filename)
            if "model_state" not in data:
                raise CheckpointError(f"{filename}: a pycls .pyth checkpoint holds 'model_state'; this one does not")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)
        data = load_array_pickle(filename)
        if "model" in data and "__author__" in data:
            return data
        data = data.get("blobs", data)
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_model(self, checkpoint):
        """detectron2's, with a checkpoint's GALW weighting state that the model does not hold
        (``galw_weighting.*``: training state, see :data:`WEIGHTING_PREFIX`) logged in one line
        that says so, instead of among fvcore's "keys not used by the model"."""
        incompatible = super()._load_model(checkpoint)
        if incompatible is None or hasattr(self.model, WEIGHTING_PREFIX.rstrip(".")):
            return incompatible
        skipped = [k for k in incompatible.unexpected_keys if k.startswith(WEIGHTING_PREFIX)]
        if skipped:
            for k in skipped:
                incompatible.unexpected_keys.remove(k)
            log_skipped_weighting(self.logger, skipped)
        return incompatible

    def resume_or_load(self, path, *, resume=True):
        """fvcore's, except that a damaged checkpoint named by ``last_checkpoint`` is skipped for the
        newest intact ``model_*.pth`` of ``save_dir`` (one whose SHA-256 matches), logged; with none
        left, CheckpointError names the damaged files."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        tagged = self.get_checkpoint_file()
        damaged = []
        for candidate in [tagged] + self._fallbacks(tagged):
            try:
                if not os.path.isfile(candidate):
                    raise CheckpointError(f"{candidate}: named by last_checkpoint, but not found")
                loaded = self.load(candidate)
            except CheckpointError as e:
                # detectron2 main's DetectionCheckpointer.load leaves this set when loading raises, and
                # asserts it unset on the next load (detectron2/checkpoint/detection_checkpoint.py, load).
                if hasattr(self, "_parsed_url_during_load"):
                    self._parsed_url_during_load = None
                logger.error("Cannot resume from %s", e)
                damaged.append(os.path.basename(candidate))
                continue
            if damaged:
                logger.warning("Resumed from %s, the newest intact checkpoint of %s; skipped the damaged %s",
                               candidate, self.save_dir, ", ".join(damaged))
            return loaded
        raise CheckpointError(
            f"--resume: no intact checkpoint in {self.save_dir}: {', '.join(damaged)} cannot be loaded (see the "
            "errors above); copy them again from a backup, or remove them (and last_checkpoint) and train again"
        )

    def _fallbacks(self, tagged):
        """The other ``model_*.pth`` with a recorded SHA-256, newest first."""
        names = [n for n in os.listdir(self.save_dir)
                 if fnmatch.fnmatchcase(n, _RESUMABLE) and os.path.isfile(sidecar_path(os.path.join(self.save_dir, n)))]
        paths = [os.path.join(self.save_dir, n) for n in names]
        paths = [p for p in paths if os.path.abspath(p) != os.path.abspath(tagged)]
        return sorted(paths, key=lambda p: (os.path.getmtime(p), p), reverse=True)

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
        big = exploded_tensors(data["model"], "model")
        if big:
            listing = ", ".join(f"{k} (max |w| {v:.3g})" for k, v in big[:10])
            raise FloatingPointError(
                f"Refusing to write {save_file}: the training diverged: {len(big)} weight tensor(s) exceed "
                f"+-{EXPLODED:g}: {listing}{' ...' if len(big) > 10 else ''}; last_checkpoint is unchanged. "
                "Lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, and resume or train again"
            )
        self.logger.info("Saving checkpoint to %s", save_file)
        torch_save_with_sha256(save_file, data)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


_WHAT_TO_DO = ("copy it again from its source, or use an earlier checkpoint (train_net.py --resume falls back to "
               "the newest intact one of OUTPUT_DIR by itself)")


def verify_checkpoint(path):
    """True when ``path`` matches the SHA-256 recorded beside it, False without a recorded one;
    CheckpointError naming the file when it is empty or differs from its recorded SHA-256."""
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint; {_WHAT_TO_DO}")
    try:
        expected = recorded_sha256(path)
    except ValueError as e:
        raise CheckpointError(f"{path}: its SHA-256 file is unreadable: {e}; {_WHAT_TO_DO}") from None
    if expected is None:
        return False
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(
            f"{path}: the file is damaged: its SHA-256 {actual} differs from {expected}, recorded in "
            f"{sidecar_path(path)} when it was written; {_WHAT_TO_DO}"
        )
    return True


def load_checkpoint_file(path):
    """``torch.load(path, weights_only=True)`` after :func:`verify_checkpoint`; CheckpointError naming
    the file when it holds more than tensors and plain containers (it could run code) or is damaged."""
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        operand = re.search(r"Unsupported operand \S+", str(e))
        if operand:  # a byte that is no pickle opcode the weights-only unpickler knows: damage, not code
            raise CheckpointError(f"{path}: not a readable checkpoint, the file is truncated or damaged ({operand[0]}); "
                                  f"{_WHAT_TO_DO}") from None
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable checkpoint ({e}); {_WHAT_TO_DO}") from None
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("WeightsUnpickler error")]
        raise CheckpointError(
            f"{path}: refusing to load objects other than tensors, numbers, strings and containers, whose "
            f"unpickling could run code ({lines[0] if lines else str(e).splitlines()[0]}); load only checkpoints "
            "from a source you trust"
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError, KeyError, IndexError) as e:  # Key/IndexError: bad pickle ops
        raise CheckpointError(
            f"{path}: not a readable checkpoint, the file is truncated or damaged ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); {_WHAT_TO_DO}"
        ) from None


def exploded_tensors(state, prefix=""):
    """(dotted name, max |value|) of the floating-point tensors of a state dict beyond +-EXPLODED."""
    found = []
    for k, v in state.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            peak = float(v.detach().abs().max())
            if peak > EXPLODED:
                found.append((name, peak))
    return found


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


def remove_periodic_checkpoints(directory: str):
    """Remove the periodic checkpoints (``model_NNNNNNN.pth`` and their ``.sha256``) of a finished
    training in ``directory``: one whose ``last_checkpoint`` names ``model_final.pth`` and whose final
    checkpoint is intact, so nothing is left to resume and the trained weights stay. A training not
    finished, or a final checkpoint without its recorded SHA-256, keeps everything (ValueError naming
    why; CheckpointError for a damaged one).
    Returns the bytes freed (logged)."""
    periodic = [name for name in sorted(os.listdir(directory)) if _PERIODIC.match(name)]
    if not periodic:
        return 0
    last = os.path.join(directory, LAST_CHECKPOINT)
    named = None
    if os.path.isfile(last):
        with open(last) as f:
            named = f.read().strip()
    if named != FINAL_CHECKPOINT:
        raise ValueError(f"{directory}: expected a finished training (last_checkpoint naming {FINAL_CHECKPOINT}), "
                         f"found {named!r}; its checkpoints are kept")
    final = os.path.join(directory, FINAL_CHECKPOINT)
    if not os.path.isfile(final) or not verify_checkpoint(final):
        raise ValueError(f"{final}: expected an intact final checkpoint with its recorded SHA-256 "
                         f"({sidecar_path(final)}); its periodic checkpoints are kept")
    freed = 0
    for name in periodic:
        path = os.path.join(directory, name)
        for p in (path, sidecar_path(path)):
            if os.path.isfile(p):
                freed += os.path.getsize(p)
                os.remove(p)
    logger.info("Removed %d periodic checkpoint(s) of the finished training in %s (%.0f MiB): %s", len(periodic),
                directory, freed / 2**20, ", ".join(periodic))
    return freed


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
