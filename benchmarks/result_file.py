"""Where a benchmark's figures go: ``results/benchmarks/<name>.json``, written by
``galw.results.write_result`` with the command line that regenerates them (the docs render their
tables from these files; ``make results``).

``GALW_RESULTS_DIR`` names another results folder (the tests point it at a temporary one, so a
test run leaves the committed results alone).
"""
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command_line(argv=None):
    """``python <script relative to the repository> <arguments>``: the command as it was run."""
    argv = sys.argv if argv is None else argv
    return shlex.join(["python", os.path.relpath(os.path.abspath(argv[0]), REPO)] + list(argv[1:]))


def save(name, data, device=None, argv=None):
    """Write ``data`` as the result file ``name``; print and return its path."""
    from galw.results import write_result

    path = write_result("benchmarks", name, data, root=os.environ.get("GALW_RESULTS_DIR") or None,
                        command=command_line(argv), device=device)
    print(f"result file: {os.path.relpath(path, REPO)}", flush=True)
    return path
