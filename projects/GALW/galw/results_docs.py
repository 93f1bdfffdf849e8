"""Docs tables as views of the result files (``results/<category>/<name>.json``, see galw.results).

A Markdown page marks a table's place with a pair of comments::

    <!-- results:benchmarks/cpu_step -->
    ...rendered here...
    <!-- /results:benchmarks/cpu_step -->

``NAME`` is one result file (``results/NAME.json``) or a category (every ``results/NAME/*.json``);
``ablation/<data>`` is the ablation study's report on that dataset (galw/ablation/report.py), ``ablation``
its conclusion across the datasets (galw/ablation/conclusion.py).
:func:`render_text` rewrites every such block from the files: the figures as a table, then the
command that produced them and the machine, load, versions, commit and date of the run. Where no
file exists yet the block names the command that makes one. ``make results`` rewrites the pages;
tests/test_docs_results.py fails when a committed page differs from what this renders.
"""
import glob
import os
import re
from typing import Any, Dict, List, Optional

from galw.results import RESULTS_DIR, read_result

__all__ = ["DOC_GLOBS", "PRODUCERS", "doc_files", "producer", "render_block", "render_file", "render_result",
           "render_text", "result_files", "referenced_names"]

#: A block: its opening comment, the rendered text, its closing comment (same name).
BLOCK = re.compile(r"<!-- results:(?P<name>[\w./-]+) -->\n(?P<body>.*?)<!-- /results:(?P=name) -->", re.S)
_OPEN = re.compile(r"<!-- (/?)results:([\w./-]+) -->")
#: The pages that hold blocks, relative to the repository root.
DOC_GLOBS = ("README.md", "projects/GALW/README.md", "projects/GALW/docs/*.md")
#: The command that writes a name's result files (longest matching prefix wins); shown until one exists.
PRODUCERS = {
    "demo": "make demo",
    "ablation": "python tools/ablation.py --out output/ablation",
    "benchmarks": "make bench",
    "benchmarks/gpu_check": "make gpu-check (on a GPU machine)",
    "benchmarks/demo_seeds_default_data0": "PYTHONPATH=projects/GALW:. .venv/bin/python benchmarks/demo_seeds.py",
    "benchmarks/demo_seeds_default_data1":
        "PYTHONPATH=projects/GALW:. .venv/bin/python benchmarks/demo_seeds.py --data-seed 1",
}


#: Block ``ablation``: the study's conclusion across its datasets (galw/ablation/conclusion.py).
ABLATION = "ablation"
#: Blocks ``ablation/<data>``: the study's report on that dataset from its kept run files
#: (galw/ablation/report.py), the same tables ``tools/ablation.py --report`` writes.
ABLATION_PREFIX = ABLATION + "/"


def producer(name: str) -> str:
    """The command that produces ``name``'s result files; a clear error for an unknown name. An
    ``ablation/<data>`` block names its dataset."""
    if name.startswith(ABLATION_PREFIX) and name.count("/") == 1:
        return f"{PRODUCERS['ablation']} --data {name[len(ABLATION_PREFIX):]}"
    parts = name.split("/")
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[:n])
        if key in PRODUCERS:
            return PRODUCERS[key]
    raise ValueError(f"results block {name!r}: no result file and no known command producing one "
                     f"(galw/results_docs.py PRODUCERS names {sorted(PRODUCERS)})")


def result_files(name: str, root: Optional[str] = None) -> List[str]:
    """``root/NAME.json`` if it exists, else every ``root/NAME/*.json`` (sorted), else []."""
    root = root or RESULTS_DIR
    one = os.path.join(root, name + ".json")
    if os.path.isfile(one):
        return [one]
    return sorted(glob.glob(os.path.join(root, name, "*.json")))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        a = abs(value)
        if a == 0 or value.is_integer() and a < 1e6:
            return str(int(value))
        if a >= 100:
            return f"{value:.1f}"
        if a >= 0.01:
            return f"{value:.3f}".rstrip("0").rstrip(".")
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value) and len(value) <= 8:
            return ", ".join(_fmt(v) for v in value)
        return f"({len(value)} values)"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Dotted keys to the scalar (or short list) leaves; lists of dicts are left to :func:`_tables`."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not _is_rows(value):
            flat[f"{prefix}{key}"] = value
    return flat


def _table(header: List[str], rows: List[List[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _rows_table(rows: List[Dict[str, Any]]) -> List[str]:
    flat = [_flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    return _table(columns, [[r.get(c) for c in columns] for r in flat])


def _footer(docs: List[Dict[str, Any]]) -> List[str]:
    """The commands, then each distinct machine and run (date, commit) of the files."""
    lines = []
    for command in dict.fromkeys(d.get("command") or "(not recorded)" for d in docs):
        lines.append(f"Command: `{command}`")
    for d in docs:
        m = d["meta"]
        machine = f"{m.get('cpu')} ({m.get('cores')} cores{', ' + m['gpu'] if m.get('gpu') else ''})"
        load = " / ".join(_fmt(x) for x in m.get("load_avg_1_5_15") or [])
        line = (f"Measured {m.get('date')} on {machine}, device {m.get('device')}, load {load}; "
                f"torch {m.get('torch')}, detectron2 {m.get('detectron2')}, commit {m.get('commit')}")
        if line not in lines:
            lines.append(line)
    return ["", "<sub>" + "<br>".join(lines) + "</sub>"]


def _tables(data: Dict[str, Any]) -> List[str]:
    """Settings as a line, the other scalars as a key/value table, each list of dicts as a table."""
    out = []
    settings = data.get("settings")
    if isinstance(settings, dict):
        out += ["Settings: " + "; ".join(f"{k} {_fmt(v)}" for k, v in _flatten(settings).items()), ""]
    for key, value in data.items():
        if _is_rows(value):
            out += ([] if key == "rows" else [f"*{key}*", ""]) + _rows_table(value) + [""]
    scalars = _flatten({k: v for k, v in data.items() if k != "settings"})
    if scalars:
        out += _table(["figure", "value"], [[k, v] for k, v in scalars.items()]) + [""]
    return out[:-1] if out and out[-1] == "" else out


def render_result(doc: Dict[str, Any]) -> str:
    """One result file's table(s) and footer."""
    return "\n".join(_tables(doc["data"]) + _footer([doc]))


#: The demo's headline columns: (header, key of a model's figures).
_DEMO_COLUMNS = [("search mAP", "mAP"), ("top-1", "top1"), ("top-5", "top5"), ("top-10", "top10"),
                 ("detection AP", "detection_AP"), ("recall", "detection_recall"),
                 ("similarity: true match", "similarity_match"), ("other people", "similarity_other")]
_DEMO_MODELS = [("untrained (random init)", "untrained"), ("colour histograms on GT boxes (the gauge)", "colour_baseline"),
                ("ROI-AlignPS* + GALW (trained)", "trained")]


def _demo_tables(docs: List[Dict[str, Any]]) -> str:
    """The demo's verdict per result file: the three models' headline figures, schedule and wall time."""
    out = []
    for d in docs:
        data = d["data"]
        ds = data.get("dataset", {})
        out.append(f"SynthPS-PRW `{ds.get('size')}` (dataset seed {ds.get('seed')}, {ds.get('num_queries')} queries), "
                   f"phase one {data.get('phase_one_iters')} + phase two {data.get('phase_two_iters')} iterations, "
                   f"demo wall time {_fmt(data.get('wall_time_s'))} s:")
        out.append("")
        rows = [[label] + [data["models"].get(key, {}).get(k) for _, k in _DEMO_COLUMNS]
                for label, key in _DEMO_MODELS if key in data.get("models", {})]
        out += _table(["model"] + [h for h, _ in _DEMO_COLUMNS], rows) + [""]
    return "\n".join(out[:-1] + _footer(docs)) + "\n"


def _no_file_yet(name: str) -> str:
    return f"No result file yet: `{producer(name)}` writes `results/{name}` and `make results` shows it here.\n"


def render_block(name: str, root: Optional[str] = None) -> str:
    """The text between a block's comments: the file's or category's tables, or the command to run."""
    if name == ABLATION:
        from galw.ablation import conclusion_markdown

        text = conclusion_markdown(os.path.join(root or RESULTS_DIR, ABLATION))
        return text if text is not None else _no_file_yet(name)
    if name.startswith(ABLATION_PREFIX):
        from galw.ablation import docs_markdown

        text = docs_markdown(name[len(ABLATION_PREFIX):], os.path.join(root or RESULTS_DIR, "ablation"))
        return text if text is not None else _no_file_yet(name)
    files = result_files(name, root)
    if not files:
        return _no_file_yet(name)
    docs = [read_result(f) for f in files]
    if name == "demo":
        return _demo_tables(docs)
    if len(docs) == 1:
        return render_result(docs[0]) + "\n"
    names = [os.path.splitext(os.path.basename(f))[0] for f in files]
    if all(not any(_is_rows(v) for v in d["data"].values()) for d in docs):
        # Files of flat figures (one per run): one table, one row per file.
        flat = [dict(run=n, **_flatten(d["data"])) for n, d in zip(names, docs)]
        columns = list(dict.fromkeys(k for r in flat for k in r))
        lines = _table(columns, [[r.get(c) for c in columns] for r in flat]) + _footer(docs)
        return "\n".join(lines) + "\n"
    parts = [f"**{n}**\n\n{render_result(d)}" for n, d in zip(names, docs)]
    return "\n\n".join(parts) + "\n"


def render_text(text: str, root: Optional[str] = None, where: str = "<text>") -> str:
    """``text`` with every results block rewritten; a clear error for an unpaired comment."""
    opened = [(m.group(1), m.group(2)) for m in _OPEN.finditer(text)]
    paired = [m.group("name") for m in BLOCK.finditer(text)]
    if len(opened) != 2 * len(paired):
        raise ValueError(f"{where}: results comments do not pair up; expected '<!-- results:NAME -->' followed "
                         f"by '<!-- /results:NAME -->' (found {[('/' if s else '') + n for s, n in opened]})")

    def block(m):
        name = m.group("name")
        return f"<!-- results:{name} -->\n{render_block(name, root)}<!-- /results:{name} -->"

    return BLOCK.sub(block, text)


def referenced_names(text: str) -> List[str]:
    """The names of the results blocks in ``text``."""
    return [m.group("name") for m in BLOCK.finditer(text)]


def doc_files(repo: str) -> List[str]:
    """The pages that may hold results blocks (:data:`DOC_GLOBS`), sorted."""
    return sorted(p for g in DOC_GLOBS for p in glob.glob(os.path.join(repo, g)))


def render_file(path: str, root: Optional[str] = None, write: bool = True) -> bool:
    """Render ``path``'s blocks; write the page when it changed (``write``); return whether it did."""
    with open(path) as f:
        text = f.read()
    new = render_text(text, root, where=path)
    if new != text and write:
        with open(path, "w") as f:
            f.write(new)
    return new != text
