"""Every config the project reads goes through galw.config_file (safe YAML): no other module calls
detectron2's ``merge_from_file``, whose default falls back to unsafe YAML."""
import ast
import os

from conftest import ROOT

SAFE_LOADER = os.path.join("projects", "GALW", "galw", "config_file.py")
SOURCES = (os.path.join("projects", "GALW"), "tools", "benchmarks", "train_net.py")


def _python_files():
    for source in SOURCES:
        path = os.path.join(ROOT, source)
        if os.path.isfile(path):
            yield path
            continue
        for dirpath, _dirs, files in os.walk(path):
            yield from (os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".py"))


def merge_from_file_calls(source):
    """Line numbers of ``<anything>.merge_from_file(...)`` calls in ``source``."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "merge_from_file"]


def test_only_the_safe_loader_calls_merge_from_file():
    calls = {}
    for path in _python_files():
        rel = os.path.relpath(path, ROOT)
        if rel == SAFE_LOADER:
            continue
        with open(path) as f:
            lines = merge_from_file_calls(f.read())
        if lines:
            calls[rel] = lines
    assert not calls, f"config loads that bypass galw.config_file.merge_config_file: {calls}"


def test_the_check_sees_a_call():
    assert merge_from_file_calls("cfg.merge_from_file('x.yaml')\nmerge_config_file(cfg, 'y')\n") == [1]
