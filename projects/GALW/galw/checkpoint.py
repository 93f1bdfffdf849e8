"""Checkpoints that survive a crash mid-write."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_write"]


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files are complete or absent, never truncated.

    fvcore writes ``model_*.pth`` in place and then ``last_checkpoint``; a crash in
    between leaves a truncated file that ``--resume`` would try to load. Here the data
    goes to a temporary file first and is renamed into place (atomic on POSIX), and
    ``last_checkpoint`` is replaced the same way.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


def atomic_write(path, write):
    """Call ``write(f)`` on a binary temporary file, sync it and rename it onto ``path``: the file
    is complete or absent, never truncated (checkpoints, the GALW groups, caches)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
