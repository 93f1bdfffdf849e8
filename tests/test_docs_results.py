"""Docs tables are views of the result files: every committed page equals what
galw.results_docs renders from the committed results/, and the renderer shows a file's figures,
its command and its machine, or the command that makes a missing file."""
import glob
import importlib.util
import json
import os

import pytest

from conftest import ROOT
from galw.results import read_result, write_result
from galw.results_docs import doc_files, referenced_names, render_block, render_text

RESULTS = os.path.join(ROOT, "results")
PAGES = [os.path.relpath(p, ROOT) for p in doc_files(ROOT)]
RESULT_FILES = sorted(glob.glob(os.path.join(RESULTS, "*", "*.json")))


@pytest.mark.parametrize("page", PAGES)
def test_page_tables_equal_their_rendering(page):
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    assert render_text(text, RESULTS, where=page) == text, (
        f"{page}: a results table differs from the result files; run `make results` "
        "(python tools/render_results.py) and commit the page")


@pytest.mark.parametrize("path", [os.path.relpath(p, ROOT) for p in RESULT_FILES])
def test_every_result_file_is_complete_and_shown(path):
    doc = read_result(os.path.join(ROOT, path))
    assert doc["command"], f"{path}: no command recorded"
    for key in ("date", "commit", "cpu", "cores", "torch", "load_avg_1_5_15"):
        assert doc["meta"].get(key) is not None, f"{path}: meta.{key} missing"
    shown = set()
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            shown.update(referenced_names(f.read()))
    name = os.path.splitext(os.path.relpath(path, "results"))[0]
    assert name in shown or os.path.dirname(name) in shown, f"{path}: no docs page shows it"


def _page(name):
    return f"# t\n\nbefore\n\n<!-- results:{name} -->\nstale\n<!-- /results:{name} -->\n\nafter\n"


def test_block_shows_figures_command_and_machine(tmp_path):
    write_result("benchmarks", "speed", {"settings": {"rounds": 3},
                                         "rows": [{"arm": "a", "ms": 12.345}, {"arm": "b", "ms": 250.04}],
                                         "ratio": 0.5},
                 root=str(tmp_path), command="python benchmarks/speed.py --rounds 3")
    out = render_text(_page("benchmarks/speed"), str(tmp_path))
    assert out.startswith("# t\n\nbefore\n\n<!-- results:benchmarks/speed -->\n") and out.endswith(
        "<!-- /results:benchmarks/speed -->\n\nafter\n")
    assert "stale" not in out
    assert "Settings: rounds 3" in out
    assert "| arm | ms |\n|---|---|\n| a | 12.345 |\n| b | 250.0 |" in out
    assert "| ratio | 0.5 |" in out
    assert "Command: `python benchmarks/speed.py --rounds 3`" in out
    meta = read_result(str(tmp_path / "benchmarks" / "speed.json"))["meta"]
    assert f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores" in out
    assert f"commit {meta['commit']}" in out
    assert render_text(out, str(tmp_path)) == out  # a rendered page renders to itself


def test_missing_result_names_its_command(tmp_path):
    out = render_text(_page("demo"), str(tmp_path))
    assert "No result file yet: `make demo` writes `results/demo`" in out
    out = render_text(_page("benchmarks/cpu_step"), str(tmp_path))
    assert "`make bench` writes `results/benchmarks/cpu_step`" in out


def test_category_of_flat_runs_is_one_table(tmp_path):
    for seed, m in ((0, 10.0), (1, 12.5)):
        write_result("sweep", f"galw_g4_seed{seed}", {"mAP": m, "top1": 20.0 + seed}, root=str(tmp_path),
                     command="make bench")
    out = render_block("sweep", str(tmp_path))
    assert "| run | mAP | top1 |" in out
    assert "| galw_g4_seed0 | 10 | 20 |" in out and "| galw_g4_seed1 | 12.5 | 21 |" in out
    assert out.count("Command: `make bench`") == 1


def test_unpaired_or_unknown_blocks_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"page\.md: results comments do not pair up"):
        render_text("<!-- results:demo -->\nx\n", str(tmp_path), where="page.md")
    with pytest.raises(ValueError, match=r"results block 'nowhere/x': no result file and no known command"):
        render_text(_page("nowhere/x"), str(tmp_path))


def test_tool_check_reports_a_stale_page(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("render_results", os.path.join(ROOT, "tools", "render_results.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    write_result("benchmarks", "speed", {"ratio": 2.0}, root=str(tmp_path / "results"), command="python b.py")
    page = tmp_path / "page.md"
    page.write_text(_page("benchmarks/speed"))
    args = ["--results-dir", str(tmp_path / "results"), str(page)]
    assert tool.main(["--check"] + args) == 1
    assert "differs" in capsys.readouterr().out
    assert page.read_text() == _page("benchmarks/speed")
    assert tool.main(args) == 0
    assert "| ratio | 2 |" in page.read_text()
    assert tool.main(["--check"] + args) == 0


def test_result_files_are_json_written_by_write_result():
    for path in RESULT_FILES:
        with open(path) as f:
            doc = json.load(f)
        assert set(doc) == {"command", "meta", "data"}, path
