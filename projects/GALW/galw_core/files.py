"""Atomic file writes: a file the project writes (checkpoints, groups, records, results) is complete or absent.

The POSIX recipe (write a temporary file in the same folder, fsync, ``os.replace``) in ten lines.
The library for it, ``atomicwrites``, is archived by its author and unmaintained, and its temporary
files carry random names, where ``galw.checkpoint.remove_stale_temp_files`` needs the writer's pid
in the name to tell a dead writer's leftovers from a live one's.
"""
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
