"""The package's import structure: the GALW core stands alone, and no module imports itself back.

The core (``galw_core``) weights any detectron2 model's loss dict, so importing it must load no
person-search code and register nothing; the person-search package (``galw``) registers on import,
as detectron2's projects do. Imports are read from the source with ast (every form: absolute,
relative, ``from pkg import module``, and imports inside functions), and the import itself is
checked in fresh interpreters.
"""
import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE_DIR = os.path.join(ROOT, "projects", "GALW")
PACKAGES = ("galw", "galw_core")


def module_path(module, package_dir=PACKAGE_DIR):
    """The source file of a project module (package -> its __init__.py); None if it has none."""
    base = os.path.join(package_dir, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def imported_modules(source, module, is_package=False):
    """Absolute names ``source`` (the text of ``module``) imports; ``from X import a`` yields X.a when
    that is a module of the project, else X. Relative imports resolve as Python resolves them."""
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
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_path(sub) is not None else base)
    return found


def project_modules(package_dir=PACKAGE_DIR):
    """Every module of the two packages, by dotted name."""
    names = []
    for top in PACKAGES:
        for dirpath, _dirs, files in os.walk(os.path.join(package_dir, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), package_dir)[: -len(".py")]
                    names.append(rel.replace(os.sep, ".").removesuffix(".__init__"))
    return sorted(names)


def import_graph(package_dir=PACKAGE_DIR):
    """{module: project modules it imports}, every import form included (see :func:`imported_modules`;
    :func:`_without_package_inits` drops the edges into a module's own parent packages)."""
    graph = {}
    for module in project_modules(package_dir):
        path = module_path(module, package_dir)
        with open(path) as f:
            names = imported_modules(f.read(), module, is_package=path.endswith("__init__.py"))
        graph[module] = {n for n in names if n.split(".")[0] in PACKAGES and n != module
                         and module_path(n, package_dir) is not None}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules [a, b, ..., a], or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def _without_package_inits(graph):
    """Edges into a package __init__ from inside that package are Python's package assembly."""
    return {m: {n for n in names if not m.startswith(n + ".")} for m, names in graph.items()}


def test_no_import_circle_in_the_package():
    graph = _without_package_inits(import_graph())
    assert {"galw_core.validation", "galw_core.weighting", "galw.evaluation"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_core_imports_nothing_of_person_search_in_its_source():
    graph = import_graph()
    crossings = {m: sorted(n for n in names if n.split(".")[0] == "galw")
                 for m, names in graph.items() if m.split(".")[0] == "galw_core"}
    crossings = {m: n for m, n in crossings.items() if n}
    assert not crossings, f"the GALW core imports person search: {crossings}"


@pytest.mark.parametrize("source, module, expected", [
    ("import galw.data.mapper", "galw_core.hook", "galw.data.mapper"),
    ("from galw import modeling", "galw_core.hook", "galw.modeling"),
    ("from galw.evaluation.search_metrics import search_ap", "galw_core.hook", "galw.evaluation.search_metrics"),
    ("from ..data import mapper", "galw.modeling.nae", "galw.data.mapper"),
    ("from ..data import PersonSearchMapper", "galw.modeling.nae", "galw.data"),
    ("from .weighting import LossWeighting", "galw_core.hook", "galw_core.weighting"),
    ("from . import hook", "galw_core", "galw_core.hook"),
    ("def f():\n    from .weighting import LossWeighting\n", "galw_core.validation", "galw_core.weighting"),
])
def test_every_import_form_is_read(source, module, expected):
    assert expected in imported_modules(source, module, is_package=module == "galw_core")


def test_a_function_level_circle_is_caught(tmp_path):
    """The check sees an import inside a function that closes a circle (validation <-> weighting)."""
    import shutil

    for top in PACKAGES:
        shutil.copytree(os.path.join(PACKAGE_DIR, top), tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "galw_core" / "validation.py", "a") as f:
        f.write("\n\ndef _late():\n    from .weighting import LossWeighting  # noqa\n")
    cycle = find_cycle(_without_package_inits(import_graph(str(tmp_path))))
    assert cycle is not None and "galw_core.validation" in cycle and "galw_core.weighting" in cycle


_SNAPSHOT = r"""
import json, sys
sys.path.insert(0, {package_dir!r})
{imports}
import detectron2.data, detectron2.modeling, detectron2.evaluation  # noqa
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.registry import Registry
registries = {{}}
for name, mod in list(sys.modules.items()):
    if name.startswith("detectron2") and mod is not None:
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, Registry):
                registries[obj._name] = sorted(obj._obj_map)
print(json.dumps({{
    "datasets": sorted(DatasetCatalog.list()),
    "registries": registries,
    "project_modules": sorted(m for m in sys.modules if m == "galw" or m.startswith("galw.")),
    "core_loaded": "galw_core" in sys.modules,
}}))
"""


def _snapshot(imports):
    code = _SNAPSHOT.format(package_dir=PACKAGE_DIR, imports=imports)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three fresh interpreters importing detectron2
def test_importing_the_core_loads_no_person_search_and_registers_nothing():
    # detectron2 alone (after the compat module, without which the pure-Python build cannot import).
    base = _snapshot("import importlib.util as u; s = u.spec_from_file_location('c', "
                     f"{os.path.join(PACKAGE_DIR, 'galw_core', 'compat.py')!r}); c = u.module_from_spec(s); "
                     "s.loader.exec_module(c); c.apply()")
    core = _snapshot("import galw_core")
    full = _snapshot("import galw")
    assert core["core_loaded"] and core["project_modules"] == []
    assert core["datasets"] == base["datasets"]
    assert core["registries"] == base["registries"]
    # The check can fail: the person-search package does register on import.
    assert {"galw", "galw.data", "galw.modeling", "galw.evaluation"} <= set(full["project_modules"])
    assert set(full["datasets"]) > set(base["datasets"])
    assert full["registries"]["META_ARCH"] != base["registries"]["META_ARCH"]


def test_models_do_not_depend_on_the_data_package():
    """A model is built from its config and the dataset catalog (galw.metadata), not from loaders."""
    graph = import_graph()
    reach = {m: sorted(n for n in names if n == "galw.data" or n.startswith("galw.data."))
             for m, names in graph.items() if m.startswith("galw.modeling")}
    assert not {m: n for m, n in reach.items() if n}
