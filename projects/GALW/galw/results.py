"""Measured figures as data: one JSON file per measurement under ``results/<category>/``.

Docs tables are rendered from these files (never typed), so every file carries what a reader
needs to judge a figure: the machine (CPU/GPU name, cores, load), the library versions, the
git commit and the date. Files are written atomically, so a killed run leaves none or a whole one.
"""
import datetime
import json
import os
import platform
import subprocess
from typing import Any, Dict, Optional

from galw_core.files import atomic_write

__all__ = ["RESULTS_DIR", "git_commit", "machine_facts", "read_result", "result_path", "write_result"]

#: The repository's results folder (projects/GALW/galw/results.py -> <repo>/results).
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RESULTS_DIR = os.path.join(_REPO, "results")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The checked-out commit of this code (``+dirty`` with uncommitted changes to tracked files), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def machine_facts(device: Optional[str] = None) -> Dict[str, Any]:
    """Machine, load, versions, commit and date of a measurement made now."""
    import torch

    try:
        import detectron2

        d2 = detectron2.__version__
    except ImportError:
        d2 = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "device": device or ("cuda" if gpu else "cpu"),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": d2,
    }


def result_path(category: str, name: str, root: Optional[str] = None) -> str:
    """``<root>/<category>/<name>.json``; category and name are plain file names."""
    for part, what in ((category, "category"), (name, "name")):
        if not part or os.sep in part or part.startswith("."):
            raise ValueError(f"result {what} {part!r}: expected a plain file name")
    return os.path.join(root or RESULTS_DIR, category, f"{name}.json")


def write_result(category: str, name: str, data: Dict[str, Any], root: Optional[str] = None,
                 command: Optional[str] = None, device: Optional[str] = None, commit: Optional[str] = None) -> str:
    """Write ``{"command", "meta": machine_facts(), "data"}`` to :func:`result_path`; return the path.

    ``command`` is the command line that regenerates the figures (docs print it beside the table).
    ``commit``: the commit the figures were made at, where that is not the one checked out now (a
    training started before a later commit); by default the checkout's.
    """
    path = result_path(category, name, root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = machine_facts(device)
    if commit is not None:
        meta["commit"] = commit
    doc = {"command": command, "meta": meta, "data": data}
    text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def read_result(path: str) -> Dict[str, Any]:
    """A result file's content; a clear error naming the file when it is not one."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"result file {path}: not readable JSON ({e})") from None
    missing = [k for k in ("meta", "data") if k not in doc]
    if missing:
        raise ValueError(f"result file {path}: missing {missing}; expected keys command, meta, data")
    return doc
