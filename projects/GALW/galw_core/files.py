"""Atomic file writes: a file the core writes (groups, phase-one record, checkpoints) is complete or absent."""
import os

__all__ = ["atomic_write"]


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
