"""The GALW core (galw_core/) is model-agnostic: no module of it, nor any galw module it imports,
imports person search (galw.data, galw.modeling, galw.evaluation, galw.visualization).

The imports are read from the source with ast (absolute, relative, `from galw import data`, and
imports inside functions), so the check needs no import of the package.
"""
import ast
import os
import sys

import pytest

from conftest import ROOT

PACKAGE_DIR = os.path.join(ROOT, "projects", "GALW")
CORE = "galw_core"
PERSON_SEARCH = ("galw.data", "galw.modeling", "galw.evaluation", "galw.visualization")


def module_path(module):
    """The source file of a galw module (package -> its __init__.py); None if it has none."""
    base = os.path.join(PACKAGE_DIR, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def imported_modules(source, module, is_package=False):
    """Absolute names of the modules ``source`` (the text of ``module``) imports.

    ``from X import a`` yields X and X.a (a may be a submodule); relative imports are resolved
    against ``module``'s package as Python does.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ImportError(f"{module}: relative import beyond the top-level package")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _within(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def core_import_graph():
    """{galw module: galw modules it imports}, from every module under galw_core and, transitively,
    every galw module outside the core that they import (package __init__ files of the parents,
    which Python also runs, are left out: galw/__init__.py registers the whole project)."""
    core_dir = os.path.join(PACKAGE_DIR, "galw", "core")
    todo = []
    for dirpath, _dirs, files in os.walk(core_dir):
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), PACKAGE_DIR)[: -len(".py")]
                todo.append(rel.replace(os.sep, ".").removesuffix(".__init__"))
    graph = {}
    while todo:
        module = todo.pop()
        if module in graph:
            continue
        path = module_path(module)
        with open(path) as f:
            names = imported_modules(f.read(), module, is_package=path.endswith("__init__.py"))
        graph[module] = {n for n in names if _within(n, ("galw",)) and module_path(n) is not None}
        todo.extend(n for n in graph[module] if n not in graph and n != "galw")
    return graph


def test_the_core_imports_no_person_search_module():
    graph = core_import_graph()
    assert {"galw_core", "galw_core.weighting", "galw_core.hook", "galw_core.train_step"} <= set(graph)
    crossings = {m: sorted(n for n in names if _within(n, PERSON_SEARCH)) for m, names in graph.items()}
    crossings = {m: n for m, n in crossings.items() if n}
    assert not crossings, f"the GALW core reaches person search: {crossings}"
    # Outside the core it reaches only the project's neutral modules (checkpoints, collectives).
    outside = {n for names in graph.values() for n in names if not _within(n, (CORE,))}
    assert outside <= {"galw", "galw.checkpoint", "galw_core.compat", "galw.config", "galw_core.distributed"}, outside


@pytest.mark.parametrize("source, module, expected", [
    ("import galw.data.mapper", "galw_core.hook", "galw.data.mapper"),
    ("from galw import modeling", "galw_core.hook", "galw.modeling"),
    ("from galw.evaluation.metrics import search_ap", "galw_core.hook", "galw.evaluation.metrics"),
    ("from .. import visualization", "galw_core.hook", "galw.visualization"),
    ("from ..data import PersonSearchMapper", "galw_core.hook", "galw.data"),
    ("from ...galw.modeling import x", "pkg.galw_core.hook", "pkg.galw.modeling"),
    ("from .weighting import LossWeighting", "galw_core.hook", "galw_core.weighting"),
    ("from . import hook", "galw_core", "galw_core.hook"),
    ("def f():\n    from ..modeling import build\n", "galw_core.probe", "galw.modeling"),
])
def test_every_import_form_is_read(source, module, expected):
    """Each form a crossing could take is resolved to its absolute module name."""
    assert expected in imported_modules(source, module, is_package=module == "galw_core")


def test_a_crossing_is_caught_in_a_copy_of_the_core(tmp_path, monkeypatch):
    """The check fails on a core module that imports person search relatively."""
    import shutil

    shutil.copytree(os.path.join(PACKAGE_DIR, "galw"), tmp_path / "galw",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "galw" / "core" / "probe.py", "a") as f:
        f.write("\n\ndef _leak():\n    from ..modeling import person_search  # noqa\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_DIR", str(tmp_path))
    with pytest.raises(AssertionError, match=r"galw_core.probe.*galw.modeling"):
        test_the_core_imports_no_person_search_module()
