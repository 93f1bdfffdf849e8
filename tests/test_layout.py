"""The house rules of the layout: modules small enough to hold one job, tools that only parse and print."""
import os

from conftest import ROOT

PACKAGE_DIR = os.path.join(ROOT, "projects", "GALW")
MAX_MODULE_LINES = 400
MAX_TOOL_LINES = 150


def _lines(path):
    with open(path) as f:
        return sum(1 for _ in f)


def _python_files(folder):
    for dirpath, _dirs, files in os.walk(folder):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def test_no_package_module_over_400_lines():
    long = {os.path.relpath(p, ROOT): n for top in ("galw", "galw_core")
            for p in _python_files(os.path.join(PACKAGE_DIR, top)) if (n := _lines(p)) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_every_tool_is_a_thin_wrapper():
    long = {os.path.relpath(p, ROOT): n for p in _python_files(os.path.join(ROOT, "tools"))
            if (n := _lines(p)) > MAX_TOOL_LINES}
    assert not long, f"tools over {MAX_TOOL_LINES} lines (move the logic into the package): {long}"
