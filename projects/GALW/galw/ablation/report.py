"""The study's report from the kept result files alone (``results/ablation/<data>/``): what
``tools/ablation.py --report`` writes there and what the docs page renders (galw/results_docs.py,
a ``<!-- results:ablation/<data> -->`` block), so both show the same tables.
"""
import os
from collections import Counter

from galw.results import read_result

from .data import apply_dataset, check_kept_draw, select_dataset
from .run_result import committed_result
from .runner import borrowed_search, finished_runs
from .search import SEARCH_DIR, plan_search
from .spec import REPO_ROOT, load_spec, plan_runs
from .tables import FIGURES, report_markdown

__all__ = ["SHIPPED_SPEC", "committed_outcome", "docs_markdown", "kept_files", "label_dataset", "planned_names"]

#: The study the docs show.
SHIPPED_SPEC = os.path.join(REPO_ROOT, "tools", "ablation_spec.yaml")


def label_dataset(spec, name=None):
    """The spec's dataset ``name`` (its first when None), with ``spec`` set up for it (data.apply_dataset:
    its opts and seeds); sets ``spec["data"]``, the report's Data line."""
    data = select_dataset(spec, name)
    apply_dataset(spec, data)
    spec["data"] = f"{data['name']}: SynthPS-PRW, data seed {data['seed']}, size {data['size']}"
    return data


def _folders(data, results_root):
    """(runs' root, kept copies' folder) of dataset ``data``: the runs' folders are only planned, nothing
    is read there."""
    return os.path.join(REPO_ROOT, "output", "ablation", data["name"]), os.path.join(results_root, data["name"])


def committed_outcome(spec, data, results_root, only=None, seeds=None):
    """finished_runs over the kept copies in ``results_root/<data>`` (the dataset's own ``variants``
    unless ``only`` names others; a borrowed search from its source's kept copies)."""
    out_root, results_dir = _folders(data, results_root)
    check_kept_draw(results_dir, data)
    return finished_runs(spec, out_root, only or data.get("variants"), seeds, results_dir, committed_result,
                         search=borrowed_search(spec, data, os.path.dirname(out_root), results_root))


def _planned(spec, data, results_root):
    out_root, results_dir = _folders(data, results_root)
    return plan_runs(spec, out_root, data.get("variants"), None, results_dir), out_root, results_dir


def planned_names(spec, data, results_root):
    """The variants the spec plans on dataset ``data``."""
    return {r["name"] for r in _planned(spec, data, results_root)[0]}


def kept_files(spec, data, results_root):
    """(The kept result files of the dataset's planned runs and of its own search that exist, sorted; the
    number of those runs): files of runs the spec no longer plans are not shown, a borrowed search's are its
    source's."""
    runs, out_root, results_dir = _planned(spec, data, results_root)
    if spec.get("search") and not data.get("search_from"):
        runs += plan_search(spec, out_root, results_dir)
    return sorted(r["result_copy"] for r in runs if os.path.isfile(r["result_copy"])), len(runs)


def _footer(files, planned):
    """The runs' machines, dates, commits, summed wall time and threads, from the kept files (a run's
    ``seconds`` is the wall time of the invocation that finished it, its ``threads`` the OpenMP threads it
    trained with, runner.run_one)."""
    docs = [read_result(p) for p in files]
    metas = [d["meta"] for d in docs]
    dates = sorted(m.get("date") or "" for m in metas)
    machines = sorted({f"{m.get('cpu')} ({m.get('cores')} cores{', ' + m['gpu'] if m.get('gpu') else ''})"
                       for m in metas})
    commits = sorted({str(m.get("commit")) for m in metas})
    hours = sum(d["data"].get("seconds") or 0.0 for d in docs) / 3600
    search = sum(os.sep + SEARCH_DIR + os.sep in p for p in files)
    threads = Counter(d["data"].get("threads") for d in docs)
    per_run = ", ".join([f"{n} ({k} files)" for n, k in sorted((n, k) for n, k in threads.items() if n is not None)]
                        + ([f"not recorded ({threads[None]} files)"] if threads[None] else []))
    return (f"<sub>{len(docs)} of {planned} planned result files ({search} of the weight search), {hours:.1f} hours "
            "of training and "
            "evaluation in the invocations that finished the runs (a resumed run counts from its resume), "
            f"threads per run {per_run}, "
            f"measured {dates[0]} to {dates[-1]} on {'; '.join(machines)}; "
            f"commits {', '.join(commits)}; torch {', '.join(sorted({str(m.get('torch')) for m in metas}))}</sub>\n")


def docs_markdown(data_name, results_root, spec_path=SHIPPED_SPEC):
    """The docs block of dataset ``data_name``: the report's tables from the kept files, the figures
    ``--report`` made there named by path, the runs' machines and dates; None without any kept file."""
    spec = load_spec(spec_path)
    data = label_dataset(spec, data_name)
    results_dir = os.path.join(results_root, data["name"])
    files, planned = kept_files(spec, data, results_root)
    if not files:
        return None
    body, _ = report_markdown(spec, committed_outcome(spec, data, results_root))
    figures = [f"`results/ablation/{data['name']}/{name}` ({what})" for name, what in FIGURES
               if os.path.isfile(os.path.join(results_dir, name))]
    if figures:
        body += "\nFigures (`python tools/ablation.py --report --data " + data["name"] + "`): " + "; ".join(figures) + ".\n"
    return body + "\n" + _footer(files, planned)
