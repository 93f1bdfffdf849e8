"""A SHA-256 beside every weights file the project writes, so that a file damaged after it was
written (flipped bytes, a partial copy) is told from an intact one before it is loaded.

The hash goes to ``<file>.sha256`` in ``sha256sum`` format (``sha256sum -c`` checks it too), written
atomically after the file. The old hash is removed before the file is replaced, so a crash in
between leaves a file without a hash (unverified), never one with a wrong hash.
"""
import hashlib
import io
import os
import re
from typing import Optional

import torch

from .files import atomic_write

__all__ = ["SIDECAR_SUFFIX", "recorded_sha256", "sha256_of", "sidecar_path", "torch_save_with_sha256"]

SIDECAR_SUFFIX = ".sha256"
_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<name>.+)$")


def sidecar_path(path: str) -> str:
    return path + SIDECAR_SUFFIX


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_sha256(path: str) -> Optional[str]:
    """The SHA-256 recorded beside ``path``; None without a ``.sha256`` file. Raises ValueError
    naming the ``.sha256`` file when it is not one line ``<64 hex digits>  <name>``."""
    sidecar = sidecar_path(path)
    try:
        with open(sidecar) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    m = _LINE.match(text.strip())
    if not m:
        raise ValueError(f"{sidecar}: expected one line '<sha256 hex>  {os.path.basename(path)}', got {text[:80]!r}")
    return m["digest"]


def torch_save_with_sha256(path: str, obj) -> str:
    """``torch.save(obj)`` to ``path`` (complete or absent), then its SHA-256 to ``path.sha256``;
    returns the hex digest."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).hexdigest()
    try:
        os.remove(sidecar_path(path))
    except FileNotFoundError:
        pass
    atomic_write(path, lambda f: f.write(payload))
    line = f"{digest}  {os.path.basename(path)}\n".encode()
    atomic_write(sidecar_path(path), lambda f: f.write(line))
    return digest
