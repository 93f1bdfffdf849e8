"""galw.ablation's study at convergence: seeds per variant, the static-weight search behind
tuned_static, result files kept for committing and the report built from them, the data seed."""
import importlib.util
import json
import os
import re
import shutil

import pytest
import yaml
from conftest import ROOT

from galw import ablation
from galw.ablation.runner import FINGERPRINT, run_opts
from galw.results import read_result

_cli_spec = importlib.util.spec_from_file_location("galw_tools_ablation_study", os.path.join(ROOT, "tools", "ablation.py"))
cli = importlib.util.module_from_spec(_cli_spec)
_cli_spec.loader.exec_module(cli)

VAL = ["DATASETS.TRAIN", "('synth_prw_idval_train',)", "DATASETS.TEST", "('synth_prw_idval_gallery',)"]
CANDIDATES = [{"name": "ones", "weights": [1, 1, 1]}, {"name": "mid", "weights": [1, 4, 1]},
              {"name": "high", "weights": [1, 9, 1.5]}]


def _spec(tmp_path, **over):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  DEVICE: cpu\n")
    spec = {"base_config": str(base), "seeds": [1, 2],
            "datasets": [{"name": "d0", "seed": 0, "size": "tiny"}, {"name": "d7", "seed": 7, "size": "tiny"}],
            "search": {"seeds": [1, 2], "candidates": CANDIDATES,
                       "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]},
            "variants": [
                {"name": "equal", "seeds": [1, 2, 3], "opts": ["MODEL.GALW.ENABLED", False]},
                {"name": "tuned_static", "seeds": [1, 2, 3],
                 "opts": ["MODEL.GALW.WEIGHTING", "manual", "MODEL.GALW.MANUAL_WEIGHTS", "{tuned_weights}"]},
                {"name": "galw_g4", "opts": ["MODEL.GALW.NUM_GROUPS", 4]}]}
    spec.update(over)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ablation.load_spec(str(path))


def _arg(cmd, key):
    return cmd[cmd.index(key) + 1] if key in cmd else None


class Trainer:
    """Stands in for train_net.py. A search run scores 60 - |w2 - 4| - seed / 10 on validation
    ("mid" is best); a variant run reaches 50 + seed (+ 3 for tuned_static, + bonus), its curve flat at the end."""

    def __init__(self, fail=(), bonus=0.0):
        self.calls, self.fail, self.bonus = [], set(fail), bonus

    def __call__(self, cmd, out_dir):
        seed, weights = int(_arg(cmd, "SEED")), _arg(cmd, "MODEL.GALW.MANUAL_WEIGHTS")
        search = _arg(cmd, "DATASETS.TEST") is not None
        name = os.path.basename(os.path.dirname(out_dir))
        self.calls.append((name, seed, cmd))
        if (name, seed) in self.fail:
            return 1
        if search:
            m_ap = 60 - abs(json.loads(weights)[1] - 4) - seed / 10
        else:
            m_ap = 50.0 + seed + 3 * (name == "tuned_static") + self.bonus
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            for it, m in ((50, m_ap - 20), (80, m_ap - 0.4), (100, m_ap)):
                f.write(json.dumps({"iteration": it, "g/search/mAP": m, "g/search/top1": m + 20}) + "\n")
        return 0


def test_seeds_per_variant_and_their_checks(tmp_path):
    spec = _spec(tmp_path)
    runs = ablation.plan_runs(spec, str(tmp_path / "o"), results_dir=str(tmp_path / "r"))
    assert [(r["name"], r["seed"]) for r in runs] == [
        ("equal", 1), ("tuned_static", 1), ("galw_g4", 1), ("equal", 2), ("tuned_static", 2), ("galw_g4", 2),
        ("equal", 3), ("tuned_static", 3)]
    assert runs[-1]["result_copy"] == str(tmp_path / "r" / "tuned_static" / "seed3.json")
    assert [(r["name"], r["seed"]) for r in ablation.plan_runs(spec, "o", seeds=[5])] == [
        ("equal", 5), ("tuned_static", 5), ("galw_g4", 5)]
    src = {"variant": "galw_g4", "groups_file": "g.json", "num_groups": 2}
    with pytest.raises(ValueError, match="seeds \\[3\\] are not seeds of its groups_from source 'galw_g4'"):
        _spec(tmp_path, variants=[{"name": "galw_g4", "opts": []},
                                  {"name": "g2", "seeds": [1, 3], "opts": [], "groups_from": src}])
    with pytest.raises(ValueError, match="'seeds' lists a seed twice"):
        _spec(tmp_path, variants=[{"name": "a", "seeds": [1, 1], "opts": []}])
    with pytest.raises(ValueError, match="uses \\{tuned_weights\\} but the spec has no 'search'"):
        _spec(tmp_path, search=None)


def test_search_must_score_on_a_validation_split(tmp_path):
    bad = {"seeds": [1], "candidates": CANDIDATES, "opts": ["MODEL.GALW.WEIGHTING", "manual",
                                                            "DATASETS.TEST", "('synth_prw_gallery',)"]}
    with pytest.raises(ValueError, match=r"search.opts: DATASETS.TEST must be exactly \('<prefix>_idval_gallery',\)"
                                         r".* got \"\('synth_prw_gallery',\)\""):
        _spec(tmp_path, search=bad)
    # scoring on the validation split while training on the full training set (held-out people included)
    for train in ("('synth_prw_train',)", "('other_idval_train',)", "('synth_prw_idval_train', 'synth_prw_train')"):
        bad = {"seeds": [1], "candidates": CANDIDATES, "opts": ["MODEL.GALW.WEIGHTING", "manual", "DATASETS.TRAIN",
                                                                train, *VAL[2:]]}
        with pytest.raises(ValueError, match=r"search.opts: DATASETS.TRAIN must be exactly "
                                             r"\('synth_prw_idval_train',\), the training part .* got "
                                             + re.escape(repr(train))):
            _spec(tmp_path, search=bad)
    bad = {"seeds": [1], "candidates": CANDIDATES, "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL[2:]]}
    with pytest.raises(ValueError, match="DATASETS.TRAIN must be exactly .* got None"):
        _spec(tmp_path, search=bad)
    bad = {"seeds": [1], "candidates": CANDIDATES,
           "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL[:2], "DATASETS.TEST", "('a_idval_gallery', 'b')"]}
    with pytest.raises(ValueError, match="DATASETS.TEST must be exactly"):
        _spec(tmp_path, search=bad)
    bad = {"seeds": [1], "candidates": CANDIDATES, "opts": ["MODEL.GALW.WEIGHTING", "rulwf", *VAL]}
    with pytest.raises(ValueError, match="WEIGHTING must be manual"):
        _spec(tmp_path, search=bad)
    bad = {"seeds": [1], "candidates": CANDIDATES[:2] + [{"name": "x", "weights": [1, 0, 1]}],
           "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]}
    with pytest.raises(ValueError, match="candidates\\[2\\] \\(x\\): weights must be a list of positive"):
        _spec(tmp_path, search=bad)


def test_search_chooses_tuned_static_and_resumes(tmp_path):
    spec = _spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "results")
    trainer = Trainer()
    outcome = ablation.run_ablation(spec, out, runner=trainer, results_dir=res)
    assert outcome["failed"] == []
    # the search's 3 x 2 runs first, then the variants; tuned_static trains with "mid"'s weights
    assert [(n, s) for n, s, _ in trainer.calls[:6]] == [
        ("ones", 1), ("mid", 1), ("high", 1), ("ones", 2), ("mid", 2), ("high", 2)]
    search = outcome["search"]
    assert (search["best"], search["weights"], search["complete"]) == ("mid", [1.0, 4.0, 1.0], True)
    assert search["score"] == pytest.approx(60 - 0.15)
    assert [c["score"] for c in search["candidates"]] == pytest.approx([57 - 0.15, 60 - 0.15, 55 - 0.15])
    tuned = [c for n, _, c in trainer.calls if n == "tuned_static"]
    assert len(tuned) == 3 and all(_arg(c, "MODEL.GALW.MANUAL_WEIGHTS") == "[1.0, 4.0, 1.0]" for c in tuned)
    assert _arg(trainer.calls[0][2], "DATASETS.TEST") == "('synth_prw_idval_gallery',)"
    # each candidate's result file holds its weights and validation mAP, kept beside the variants'
    kept = read_result(os.path.join(res, "search", "high", "seed2.json"))["data"]
    assert (kept["weights"], kept["mAP"]) == ([1.0, 9.0, 1.5], pytest.approx(54.8))
    assert read_result(os.path.join(res, "tuned_static", "seed3.json"))["data"]["mAP"] == 56.0
    assert sorted(os.listdir(res)) == ["equal", "galw_g4", "search", "tuned_static"]
    # resumed: nothing trains again
    again = Trainer()
    assert ablation.run_ablation(spec, out, runner=again, results_dir=res)["search"]["best"] == "mid"
    assert again.calls == []


def test_a_result_trained_with_other_weights_is_not_reused(tmp_path):
    """Each result file records the overrides it trained with; when the search's choice changes, the
    old tuned_static results are an error naming the file and both weight vectors, before any of the
    variants trains again."""
    spec = _spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "results")
    ablation.run_ablation(spec, out, runner=Trainer(), results_dir=res)
    tuned = os.path.join(out, "tuned_static", "seed1", ablation.RESULT_FILE)
    assert read_result(tuned)["data"]["opts"] == [
        "MODEL.GALW.WEIGHTING", "manual", "MODEL.GALW.MANUAL_WEIGHTS", "[1.0, 4.0, 1.0]"]
    assert read_result(os.path.join(out, "equal", "seed1", ablation.RESULT_FILE))["data"]["opts"] == [
        "MODEL.GALW.ENABLED", "False"]
    # a new first candidate ties with "mid" and, first in spec order, becomes the choice
    search = dict(spec["search"], candidates=[{"name": "wide", "weights": [2, 4, 2]}, *CANDIDATES])
    changed = _spec(tmp_path, search=search)
    trainer = Trainer()
    with pytest.raises(ValueError, match=re.escape(tuned) + r": was trained with other opts than planned \("
                                         r"MODEL.GALW.MANUAL_WEIGHTS: trained \[1.0, 4.0, 1.0\], "
                                         r"planned \[2.0, 4.0, 2.0\]\)"):
        ablation.run_ablation(changed, out, runner=trainer, results_dir=res)
    assert [(n, s) for n, s, _ in trainer.calls] == [("wide", 1), ("wide", 2)]  # only the new candidate trained
    # a changed schedule is caught the same way; a result file without opts is not trusted either
    longer = _spec(tmp_path, common_opts=["SOLVER.MAX_ITER", 200])
    with pytest.raises(ValueError, match=r"search/ones/seed1/ablation_result.json: was trained with other opts "
                                         r"than planned \(SOLVER.MAX_ITER: trained <not set>, planned 200\)"):
        ablation.run_ablation(longer, out, runner=Trainer(), results_dir=res)
    from galw.ablation.runner import reusable_result

    doc = read_result(tuned)
    doc["data"].pop("opts")
    with open(tuned, "w") as f:
        json.dump(doc, f)
    run = next(r for r in ablation.plan_runs(spec, out) if (r["name"], r["seed"]) == ("tuned_static", 1))
    run["opts"] = [o.replace("{tuned_weights}", "[1.0, 4.0, 1.0]") for o in run["opts"]]
    with pytest.raises(ValueError, match=re.escape(tuned) + ": records no opts; expected a result of opts"):
        reusable_result(spec, run)
    # the planned opts again: every run is reused, nothing trains
    shutil.rmtree(os.path.join(out, "search", "wide"))
    shutil.rmtree(os.path.join(res, "search", "wide"))
    os.remove(tuned)
    shutil.copy(os.path.join(res, "tuned_static", "seed1.json"), tuned)
    again = Trainer()
    assert ablation.run_ablation(spec, out, runner=again, results_dir=res)["failed"] == []
    assert again.calls == []


def test_a_kept_copy_that_differs_from_its_retrained_run_is_an_error(tmp_path):
    spec = _spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "results")
    ablation.run_ablation(spec, out, runner=Trainer(), only=["equal"], seeds=[1], results_dir=res)
    copy = os.path.join(res, "equal", "seed1.json")
    mtime = os.stat(copy).st_mtime_ns
    # reused with an identical copy: the copy is left as it is
    ablation.run_ablation(spec, out, runner=Trainer(), only=["equal"], seeds=[1], results_dir=res)
    assert os.stat(copy).st_mtime_ns == mtime
    # the run trained again elsewhere (a folder of its own, no kept copy) to other figures, then that folder
    # is run with the results folder: the old copy is not kept silently
    other = str(tmp_path / "other")
    result = os.path.join(other, "equal", "seed1", ablation.RESULT_FILE)
    ablation.run_ablation(spec, other, runner=Trainer(bonus=1.0), only=["equal"], seeds=[1])
    with pytest.raises(ValueError, match=re.escape(copy) + ": the kept copy differs from the run's result file "
                                         + re.escape(result)):
        ablation.run_ablation(spec, other, runner=Trainer(), only=["equal"], seeds=[1], results_dir=res)
    assert (read_result(copy)["data"]["mAP"], read_result(result)["data"]["mAP"]) == (51.0, 52.0)


def test_an_incomplete_search_blocks_only_tuned_static(tmp_path):
    spec = _spec(tmp_path)
    outcome = ablation.run_ablation(spec, str(tmp_path / "out"), runner=Trainer(fail={("high", 2)}))
    reasons = sorted((f["name"], f["seed"], f["reason"]) for f in outcome["failed"])
    assert reasons == [("high", 2, "exit code 1")] + [("tuned_static", s, "the weight search is not complete")
                                                      for s in (1, 2, 3)]
    assert outcome["search"]["best"] is None and outcome["search"]["candidates"][2]["seeds"] == [1]
    assert sorted({r["name"] for r in outcome["results"]}) == ["equal", "galw_g4"]
    retry = Trainer()
    outcome = ablation.run_ablation(spec, str(tmp_path / "out"), runner=retry)
    assert [(n, s) for n, s, _ in retry.calls] == [("high", 2)] + [("tuned_static", s) for s in (1, 2, 3)]
    assert outcome["failed"] == [] and outcome["search"]["best"] == "mid"


def test_report_from_the_kept_result_files_alone(tmp_path, capsys):
    spec = _spec(tmp_path)
    out, res = tmp_path / "out", tmp_path / "results"
    ablation.run_ablation(spec, str(out / "d0"), runner=Trainer(), results_dir=str(res / "d0"))
    # an older run without its copy gets one when it is reused
    os.remove(res / "d0" / "equal" / "seed1.json")
    ablation.run_ablation(spec, str(out / "d0"), runner=Trainer(fail=set()), results_dir=str(res / "d0"))
    assert (res / "d0" / "equal" / "seed1.json").is_file()
    shutil.rmtree(out)  # the report needs the kept files only
    cli.main(["--spec", spec["_path"], "--out", str(out), "--results", str(res), "--report"])
    md = (res / "d0" / "ablation.md").read_text()
    assert "Data: `d0: SynthPS-PRW, data seed 0, size tiny`" in md
    assert "| tuned_static |  | 3 | 55.00 ± 1.00 |" in md
    assert "search candidate `mid` [1.0, 4.0, 1.0] (validation mAP 59.85" in md
    assert "| mid (chosen) | 1, 4, 1 | 1, 2 | 59.90, 59.80 (mean 59.85) |" in md
    assert "| tuned_static | equal | 3 | +3.00 | [+3.00, +3.00] | n/a |" in md
    assert "Baseline `equal` converged on every seed: yes." in md
    # the answer comes first: galw_g4 is 3 below tuned_static on both seeds, level with equal; differences
    # without spread have no test, so no verdict
    assert md.index("The answer on this dataset") < md.index("| variant | paper tables |")
    assert ("* `galw_g4` vs `tuned_static`: Δ mAP -3.00, 2 paired seeds: **n/a (every paired seed differs by the "
            "same amount: no spread to test)**.") in md
    assert "* `galw_g4` vs `equal`: Δ mAP +0.00, 2 paired seeds: **no difference**." in md
    saved = json.loads((res / "d0" / "ablation.json").read_text())
    assert saved["search"]["best"] == "mid" and saved["convergence"]["baseline_converged"] is True
    assert [v["worst_range"] for v in saved["convergence"]["variants"]] == pytest.approx([0.4] * 3)
    for png in ("ablation_means.png", "ablation_curves.png"):
        assert (res / "d0" / png).read_bytes()[:4] == b"\x89PNG"
    assert not out.exists()  # the report trains nothing and writes only into the results folder
    # the other dataset has no result files yet: everything listed as not run
    cli.main(["--spec", spec["_path"], "--out", str(out), "--results", str(res), "--report", "--data", "d7"])
    assert json.loads((res / "d7" / "ablation.json").read_text())["not_run"][0] == {"name": "equal", "seed": 1}
    capsys.readouterr()
    # the docs block: the report's tables from the same kept files, the figures named, the runs' machines
    block = ablation.docs_markdown("d0", str(res), spec["_path"])
    assert block.startswith("Base config: ") and "| tuned_static |  | 3 | 55.00 ± 1.00 |" in block
    assert block.split("Figures")[0] == md[md.index("Base config: "):md.index("![")].rstrip("\n") + "\n\n"
    assert "`results/ablation/d0/ablation_curves.png` (mAP against iteration" in block
    assert re.search(r"<sub>14 of 14 planned result files \(6 of the weight search\), [0-9.]+ hours .*, threads per "
                     r"run 1 \(14 files\), measured 20", block)
    assert ablation.docs_markdown("d7", str(res), spec["_path"]) is None  # no kept file there


def _shipped_record(dataset, name, search=False):
    """What a seed-1 result of ``name`` on the shipped spec's ``dataset`` records of its plan: the opts and
    the config files' fingerprint a report checks (runner.check_result)."""
    spec = ablation.load_spec(ablation.SHIPPED_SPEC)
    ablation.label_dataset(spec, dataset)
    runs = ablation.plan_search(spec, "out") if search else ablation.plan_runs(spec, "out")
    run = next(r for r in runs if r["name"] == name and r["seed"] == 1)
    return {"opts": run_opts(spec, run), FINGERPRINT: ablation.config_fingerprint(spec)}


def test_a_docs_ablation_block_reads_results_ablation_or_names_the_command(tmp_path):
    from galw.results import write_result
    from galw.results_docs import render_block

    assert render_block("ablation/data1", str(tmp_path)) == (
        "No result file yet: `python tools/ablation.py --out output/ablation --data data1` writes "
        "`results/ablation/data1` and `make results` shows it here.\n")
    # the report's own files (written by --report) are not run files: still nothing to show
    (tmp_path / "ablation" / "data1").mkdir(parents=True)
    (tmp_path / "ablation" / "data1" / "ablation.json").write_text("{}")
    assert render_block("ablation/data1", str(tmp_path)).startswith("No result file yet: ")
    # one kept search run of the shipped study under <root>/ablation/data0: the block is the report
    data = {"name": "equal", "seed": 1, "seconds": 600.0, "mAP": 4.5, "top1": 8.3, "curve": [],
            **_shipped_record("data0", "equal", search=True)}
    write_result("seed1", "x", data, root=str(tmp_path / "ablation" / "data0" / "search" / "equal"))
    os.rename(tmp_path / "ablation" / "data0" / "search" / "equal" / "seed1" / "x.json",
              tmp_path / "ablation" / "data0" / "search" / "equal" / "seed1.json")
    block = render_block("ablation/data0", str(tmp_path))
    assert "Data: `data0: SynthPS-PRW, data seed 0, size default`" in block
    assert "tuned_static's weights: the search is not complete" in block and "No variant has a finished run yet." in block
    assert "| equal | 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 | 1 | 4.50 |" in block
    assert "| reid_x0.1 | 1, 1, 1, 1, 0.1, 1, 1, 1, 0.1, 0.1 | - | not run (yet) |" in block
    assert "<sub>1 of 70 planned result files (1 of the weight search), 0.2 hours" in block
    # a kept file of a variant the spec no longer plans is not counted
    stale = tmp_path / "ablation" / "data0" / "old_variant" / "seed1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text((tmp_path / "ablation" / "data0" / "search" / "equal" / "seed1.json").read_text())
    assert "<sub>1 of 70 planned result files (1 of the weight search)" in render_block("ablation/data0", str(tmp_path))
    # data1 borrows data0's search: its block shows that search, and counts none of its files
    write_result("seed1", "x", dict(data, curve=[{"iteration": 2000, "mAP": 4.5}], **_shipped_record("data1", "equal")),
                 root=str(tmp_path / "ablation" / "data1" / "equal"))
    os.rename(tmp_path / "ablation" / "data1" / "equal" / "seed1" / "x.json",
              tmp_path / "ablation" / "data1" / "equal" / "seed1.json")
    block = render_block("ablation/data1", str(tmp_path))
    assert "tuned_static's weights: the search on dataset `data0` is not complete" in block
    assert "| equal | 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 | 1 | 4.50 |" in block
    assert "<sub>1 of 15 planned result files (0 of the weight search)" in block


def test_data_seed_keeps_runs_apart_and_generates_once(tmp_path, capsys):
    spec = _spec(tmp_path)
    cli.main(["--spec", spec["_path"], "--out", str(tmp_path / "o"), "--dry-run", "--data", "d7", "--only", "equal"])
    lines = capsys.readouterr().out.splitlines()
    assert [_arg(line.split(), "OUTPUT_DIR") for line in lines] == [
        str(tmp_path / "o" / "d7" / "equal" / f"seed{s}") for s in (1, 2, 3)]
    with pytest.raises(ValueError, match="no dataset named 'd9' \\(--data\\).*\\['d0', 'd7'\\]"):
        ablation.select_dataset(spec, "d9")
    made = []

    def generate(layout, out, seed, size):
        made.append((layout, os.path.relpath(out, tmp_path), seed, size))
        os.makedirs(out)

    d7 = ablation.select_dataset(spec, "d7")
    root = ablation.prepare_dataset(str(tmp_path / "o"), d7, generate)
    assert root == str(tmp_path / "o" / "d7" / "datasets")
    assert ablation.prepare_dataset(str(tmp_path / "o"), d7, generate) == root
    assert made == [("prw", os.path.join("o", "d7", "datasets", "SynthPS-PRW"), 7, "tiny")]
    with pytest.raises(ValueError, match="holds SynthPS .*'seed': 7.*wants .*'seed': 8"):
        ablation.prepare_dataset(str(tmp_path / "o"), dict(d7, seed=8), generate)
    import sys

    show = "import os; print(os.environ['DETECTRON2_DATASETS'])"
    assert ablation.subprocess_runner([sys.executable, "-c", show], str(tmp_path / "r"), datasets_root=root) == 0
    assert (tmp_path / "r" / "ablation_log.txt").read_text().strip() == root


def test_kept_results_are_stamped_with_their_draw_of_the_data(tmp_path):
    """A results folder names the draw its files were trained on: a report, a training or a borrowing
    dataset that wants another draw there is an error, not a silent reuse."""
    spec = _spec(tmp_path)
    res = tmp_path / "results"
    d0 = ablation.select_dataset(spec, "d0")
    ablation.check_kept_draw(str(res / "d0"), d0)  # nothing kept, no stamp: nothing to check
    assert not (res / "d0").exists()
    ablation.check_kept_draw(str(res / "d0"), d0, create=True)
    assert json.loads((res / "d0" / "ablation_dataset.json").read_text()) == {"layout": "prw", "seed": 0, "size": "tiny"}
    ablation.check_kept_draw(str(res / "d0"), d0, create=True)
    redrawn = [{"name": "d0", "seed": 3, "size": "tiny"},
               {"name": "d7", "seed": 7, "size": "tiny", "variants": ["tuned_static"], "search_from": "d0"}]
    other = _spec(tmp_path, datasets=redrawn)
    wrong = r"d0/ablation_dataset.json: says its result files were trained on SynthPS .*'seed': 0.*wants .*'seed': 3"
    with pytest.raises(ValueError, match=wrong):
        cli.main(["--spec", other["_path"], "--out", str(tmp_path / "out"), "--results", str(res), "--report"])
    with pytest.raises(ValueError, match=wrong):
        cli.main(["--spec", other["_path"], "--out", str(tmp_path / "out"), "--results", str(res), "--dry-run",
                  "--data", "d7"])
    with pytest.raises(ValueError, match=wrong):
        ablation.committed_outcome(other, ablation.label_dataset(other, "d0"), str(res))


def test_dry_run_lists_the_search_before_tuned_static(tmp_path):
    spec = _spec(tmp_path)
    cmds = ablation.dry_run_commands(spec, str(tmp_path / "o"), only=["tuned_static"], seeds=[1])
    assert [_arg(c, "MODEL.GALW.MANUAL_WEIGHTS") for c in cmds] == [
        "[1.0, 1.0, 1.0]", "[1.0, 4.0, 1.0]", "[1.0, 9.0, 1.5]", "[1.0, 1.0, 1.0]", "[1.0, 4.0, 1.0]",
        "[1.0, 9.0, 1.5]", "{tuned_weights}"]
    assert _arg(cmds[0], "OUTPUT_DIR") == str(tmp_path / "o" / "search" / "ones" / "seed1")


def test_a_dataset_lists_the_variants_it_trains(tmp_path, capsys):
    """A dataset's ``variants`` are its runs (``--only`` still wins); an unknown name is an error."""
    datasets = [{"name": "d0", "seed": 0, "size": "tiny"},
                {"name": "d7", "seed": 7, "size": "tiny", "variants": ["equal"]}]
    spec = _spec(tmp_path, datasets=datasets)
    cli.main(["--spec", spec["_path"], "--out", str(tmp_path / "o"), "--dry-run", "--data", "d7"])
    dirs = [_arg(line.split(), "OUTPUT_DIR") for line in capsys.readouterr().out.splitlines()]
    assert dirs == [str(tmp_path / "o" / "d7" / "equal" / f"seed{s}") for s in (1, 2, 3)]
    cli.main(["--spec", spec["_path"], "--out", str(tmp_path / "o"), "--dry-run", "--data", "d7", "--only", "galw_g4"])
    dirs = [_arg(line.split(), "OUTPUT_DIR") for line in capsys.readouterr().out.splitlines()]
    assert dirs == [str(tmp_path / "o" / "d7" / "galw_g4" / f"seed{s}") for s in (1, 2)]
    cli.main(["--spec", spec["_path"], "--out", str(tmp_path / "o"), "--dry-run", "--data", "d0"])
    assert len(capsys.readouterr().out.splitlines()) == 3 * 2 + 3 + 3 + 2  # search, equal, tuned_static, galw_g4
    with pytest.raises(ValueError, match=r"spec.yaml: datasets\[1\].variants: no variant\(s\) named \['galw_g9'\]"):
        _spec(tmp_path, datasets=[datasets[0], dict(datasets[1], variants=["equal", "galw_g9"])])
    with pytest.raises(ValueError, match=r"datasets\[1\].variants: expected a non-empty list"):
        _spec(tmp_path, datasets=[datasets[0], dict(datasets[1], variants=[])])


def _claim_spec(tmp_path, claims, paper_g4=(52.89, 86.07)):
    variants = [{"name": "equal", "paper": {"mAP": 48.68, "top1": 84.15}, "opts": []},
                {"name": "galw_g4", "paper": {"mAP": paper_g4[0], "top1": paper_g4[1]}, "opts": []},
                {"name": "ulwf", "paper": {"mAP": 45.76, "top1": 82.77}, "opts": []},
                {"name": "plain", "opts": []}]
    return _spec(tmp_path, search=None, variants=variants, claims=claims)


def test_the_papers_claims_are_checked_in_direction_with_their_interval(tmp_path):
    claims = [{"table": "3", "variant": "galw_g4", "reference": "equal"},
              {"table": "2", "variant": "ulwf", "reference": "equal"},
              {"table": "4", "variant": "ulwf", "reference": "galw_g4"}]
    spec = _claim_spec(tmp_path, claims)
    results = [{"name": n, "seed": s, "mAP": v} for n, vals in
               (("equal", (50.0, 52.0, 54.0)), ("galw_g4", (53.0, 56.0, 57.5)), ("ulwf", (50.5, 51.0, 55.0)))
               for s, v in zip((1, 2, 3), vals)]
    checked = ablation.check_claims(spec, ablation.aggregate(spec, results))
    # galw_g4 - equal: diffs 3, 4, 3.5 (paper +4.21): the interval excludes 0
    assert checked[0]["paper_diff"] == pytest.approx(4.21) and checked[0]["measured"]["mean_diff"] == pytest.approx(3.5)
    assert checked[0]["measured"]["ci_low"] > 0 and checked[0]["verdict"] == "reproduced"
    # ulwf - equal: diffs +0.5, -1, +1 (paper -2.92): opposite sign, the interval holds 0
    assert checked[1]["measured"]["mean_diff"] == pytest.approx(1 / 6) and checked[1]["verdict"] == "opposite, not significant"
    # ulwf - galw_g4: diffs -2.5, -5, -2.5 (paper -7.13): same sign, but the interval (-3.33 +- 3.58) holds 0
    assert checked[2]["measured"]["ci_high"] > 0 and checked[2]["verdict"] == "same direction, not significant"
    text = ablation.claims_table(checked)
    assert "| 3 | galw_g4 | equal | +4.21 | 3 | +3.50 | [+2.26, +4.74] | reproduced |" in text
    out = tmp_path / "tables"
    ablation.write_tables(spec, {"results": results, "failed": []}, str(out), figures=False)
    assert "The paper's claims" in (out / "ablation.md").read_text()
    saved = json.loads((out / "ablation.json").read_text())["claims"]
    assert [c["verdict"] for c in saved] == ["reproduced", "opposite, not significant", "same direction, not significant"]
    # one paired seed has no interval; a variant without runs has no measurement
    one = ablation.check_claims(spec, ablation.aggregate(spec, [r for r in results if r["seed"] == 1]))
    assert one[0]["verdict"] == "n/a (fewer than 2 paired seeds)"
    none = ablation.check_claims(spec, ablation.aggregate(spec, [r for r in results if r["name"] == "equal"]))
    assert none[0]["measured"] is None and none[0]["verdict"] == "n/a (no runs)"
    only_equal = [r for r in results if r["name"] == "equal"]
    waiting = [{"name": "galw_g4", "seed": 1}, {"name": "ulwf", "seed": 1}]
    ablation.write_tables(spec, {"results": only_equal, "failed": [], "not_run": waiting}, str(out), figures=False)
    text = (out / "ablation.md").read_text()
    assert "The paper's claims" not in text
    assert "Claims waiting for runs of both variants: 3: galw_g4 vs equal, ulwf vs equal, ulwf vs galw_g4." in text
    # a claim whose variants this dataset does not plan is not listed at all
    ablation.write_tables(spec, {"results": only_equal, "failed": [], "not_run": waiting[:1]}, str(out), figures=False)
    assert "Claims waiting for runs of both variants: 1: galw_g4 vs equal." in (out / "ablation.md").read_text()
    # paired seeds that all differ by the same amount leave the t-test nothing to measure
    shifted = [r for r in results if r["name"] == "equal"]
    shifted += [dict(r, name="galw_g4", mAP=r["mAP"] + 3) for r in shifted]
    assert ablation.check_claims(spec, ablation.aggregate(spec, shifted))[0]["verdict"] == (
        "n/a (every paired seed differs by the same amount: no spread to test)")
    # a measured mean of exactly 0 has no direction
    tied = [dict(r, mAP=50.0 + r["seed"]) for r in results if r["name"] in ("equal", "galw_g4")]
    assert ablation.check_claims(spec, ablation.aggregate(spec, tied))[0]["verdict"] == "no difference"
    # the paper's sign the other way round: a significant measured difference is "opposite, significant"
    flipped = _claim_spec(tmp_path, claims[:1], paper_g4=(40.0, 80.0))
    assert ablation.check_claims(flipped, ablation.aggregate(flipped, results))[0]["verdict"] == "opposite, significant"


def test_a_claim_between_equal_paper_figures_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"claims\[0\]: the paper's mAP of 'galw_g4' and 'equal' are equal \(48.68\)"):
        _claim_spec(tmp_path, [{"table": "1", "variant": "galw_g4", "reference": "equal"}], paper_g4=(48.68, 84.15))


@pytest.mark.parametrize("claims, match", [
    ([{"table": "1", "variant": "galw_g9", "reference": "equal"}], r"claims\[0\].variant: no variant named 'galw_g9'"),
    ([{"table": "1", "variant": "plain", "reference": "equal"}], r"claims\[0\].variant: variant 'plain' has no paper"),
    ([{"table": "1", "variant": "equal", "reference": "equal"}], r"claims\[0\]: a variant compared with itself"),
    ([{"table": "1", "variant": "equal"}], r"claims\[0\]: expected \{table, variant, reference\}"),
])
def test_a_bad_claim_is_refused_with_its_place(tmp_path, claims, match):
    with pytest.raises(ValueError, match="spec.yaml: " + match):
        _claim_spec(tmp_path, claims)


def test_paper_figures_must_be_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"spec.yaml: variant 'equal': paper must be \{mAP: <number>, top1: <number>\}"):
        _spec(tmp_path, search=None, variants=[{"name": "equal", "paper": {"mAP": "48"}, "opts": []}])


def test_a_dataset_can_take_its_tuned_weights_from_an_earlier_datasets_search(tmp_path, capsys):
    """``search_from``: no search trains on the dataset; tuned_static trains with the source's choice
    once the source's search is complete, and the report says whose search it was."""
    datasets = [{"name": "d0", "seed": 0, "size": "tiny"},
                {"name": "d7", "seed": 7, "size": "tiny", "variants": ["equal", "tuned_static"], "search_from": "d0"}]
    spec = _spec(tmp_path, datasets=datasets)
    out, res = tmp_path / "out", tmp_path / "results"
    d7 = ablation.select_dataset(spec, "d7")
    # the source's search has not run: tuned_static waits, naming where the search runs
    outcome = ablation.run_ablation(spec, str(out / "d7"), runner=Trainer(), results_dir=str(res / "d7"),
                                    search=ablation.borrowed_search(spec, d7, str(out), str(res)))
    assert sorted({(f["name"], f["reason"]) for f in outcome["failed"]}) == [
        ("tuned_static", "the weight search is not complete (it runs on dataset 'd0': --data d0)")]
    assert not (out / "d7" / "search").exists() and not (res / "d7" / "search").exists()
    # d0's search, then d7: only tuned_static trains, with d0's choice, and no search run on d7
    ablation.run_ablation(spec, str(out / "d0"), runner=Trainer(), only=["equal"], results_dir=str(res / "d0"))
    ablation.run_ablation(spec, str(out / "d0"), runner=Trainer(), only=["tuned_static"], seeds=[1],
                          results_dir=str(res / "d0"))
    borrowed = ablation.borrowed_search(spec, d7, str(out), str(res))
    assert (borrowed["dataset"], borrowed["best"], borrowed["weights"]) == ("d0", "mid", [1.0, 4.0, 1.0])
    trainer = Trainer()
    outcome = ablation.run_ablation(spec, str(out / "d7"), runner=trainer, results_dir=str(res / "d7"), search=borrowed)
    assert outcome["failed"] == []
    assert [(n, s) for n, s, _ in trainer.calls] == [("tuned_static", s) for s in (1, 2, 3)]
    assert {_arg(c, "MODEL.GALW.MANUAL_WEIGHTS") for _, _, c in trainer.calls} == {"[1.0, 4.0, 1.0]"}
    # the tool: a dry run lists no search, the report names the source, the docs count none of its files
    cli.main(["--spec", spec["_path"], "--out", str(out), "--results", str(res), "--dry-run", "--data", "d7"])
    assert [_arg(line.split(), "OUTPUT_DIR").split(os.sep)[-3] for line in capsys.readouterr().out.splitlines()] == [
        "d7"] * 6
    cli.main(["--spec", spec["_path"], "--out", str(out), "--results", str(res), "--report", "--data", "d7"])
    md = (res / "d7" / "ablation.md").read_text()
    assert ("search candidate `mid` [1.0, 4.0, 1.0] (validation mAP 59.85), from the search on dataset `d0` (not "
            "repeated on this one).") in md
    assert "The weight search on dataset `d0` (validation mAP" in md
    assert "| tuned_static | equal | 3 | +3.00 | [+3.00, +3.00] | n/a |" in md
    block = ablation.docs_markdown("d7", str(res), spec["_path"])
    assert re.search(r"<sub>6 of 6 planned result files \(0 of the weight search\)", block)


@pytest.mark.parametrize("datasets, match", [
    ([{"name": "d0", "seed": 0, "search_from": "d7"}, {"name": "d7", "seed": 7}],
     r"datasets\[0\].search_from: expected the name of a dataset listed before it that runs its own search, one of "
     r"\[\]; got 'd7'"),
    ([{"name": "d0", "seed": 0}, {"name": "d7", "seed": 7, "search_from": "d9"}],
     r"datasets\[1\].search_from: .* one of \['d0'\]; got 'd9'"),
    ([{"name": "d0", "seed": 0}, {"name": "d7", "seed": 7, "search_from": "d0"},
      {"name": "d8", "seed": 8, "search_from": "d7"}], r"datasets\[2\].search_from: .* one of \['d0'\]; got 'd7'"),
])
def test_a_bad_search_from_is_refused_with_its_place(tmp_path, datasets, match):
    with pytest.raises(ValueError, match=match):
        _spec(tmp_path, datasets=datasets)


def test_search_from_needs_a_search(tmp_path):
    with pytest.raises(ValueError, match=r"datasets\[1\].search_from: the spec has no 'search' section"):
        _spec(tmp_path, search=None, variants=[{"name": "equal", "opts": []}],
              datasets=[{"name": "d0", "seed": 0}, {"name": "d7", "seed": 7, "search_from": "d0"}])


def test_a_borrowed_search_is_checked_like_a_reused_result(tmp_path):
    """The source's search results must be of the planned opts and config files before their choice
    trains anything on the borrowing dataset or is shown in its report."""
    datasets = [{"name": "d0", "seed": 0, "size": "tiny"},
                {"name": "d7", "seed": 7, "size": "tiny", "variants": ["tuned_static"], "search_from": "d0"}]
    spec = _spec(tmp_path, datasets=datasets)
    out, res = tmp_path / "out", tmp_path / "results"
    ablation.run_ablation(spec, str(out / "d0"), runner=Trainer(), only=["tuned_static"], seeds=[1],
                          results_dir=str(res / "d0"))
    d7 = ablation.select_dataset(spec, "d7")
    longer = _spec(tmp_path, datasets=datasets, common_opts=["SOLVER.MAX_ITER", 7])
    with pytest.raises(ValueError, match=r"search/ones/seed1.json: was trained with other opts than planned "
                                         r"\(SOLVER.MAX_ITER: trained <not set>, planned 7\)"):
        ablation.borrowed_search(longer, d7, str(out), str(res))
    (tmp_path / "base.yaml").write_text("MODEL:\n  DEVICE: cpu\nSOLVER:\n  BASE_LR: 0.5\n")
    with pytest.raises(ValueError, match=r"search/ones/seed1/ablation_result.json: was trained from config files of "
                                         r"fingerprint [0-9a-f]{16}, while"):
        ablation.borrowed_search(spec, d7, str(out))


def test_search_from_needs_a_source_that_runs_the_search(tmp_path):
    datasets = [{"name": "d0", "seed": 0, "variants": ["equal"]}, {"name": "d7", "seed": 7, "search_from": "d0"}]
    with pytest.raises(ValueError, match=r"datasets\[1\].search_from: dataset 'd0' trains no variant with "
                                         r"\{tuned_weights\} \(its variants: \['equal'\]\)"):
        _spec(tmp_path, datasets=datasets)


def test_the_answer_is_provisional_while_a_planned_run_failed(tmp_path):
    spec = _spec(tmp_path)
    out = str(tmp_path / "out")
    outcome = ablation.run_ablation(spec, out, runner=Trainer(fail={("equal", 3), ("galw_g4", 2)}))
    md, _ = ablation.report_markdown(spec, outcome)
    assert "* `galw_g4` vs `equal`: Δ mAP +0.00, 1 paired seed: **n/a (fewer than 2 paired seeds)** (provisional: " \
           "galw_g4 seed 2 without a result yet; equal seed 3 without a result yet)." in md
    assert "`equal` yes (provisional), `tuned_static` yes, `galw_g4` yes (provisional)" in md


def test_a_dataset_can_carry_a_second_arm_with_its_own_opts_and_seeds(tmp_path, capsys):
    """A dataset's ``opts`` follow the common opts and its ``seeds`` replace every variant's; a search it
    borrows is checked against the opts its source trained with, not its own."""
    datasets = [{"name": "d0", "seed": 0, "size": "tiny"},
                {"name": "d0_long", "seed": 0, "size": "tiny", "variants": ["tuned_static"], "seeds": [1, 4],
                 "opts": ["SOLVER.MAX_ITER", 300], "search_from": "d0"}]
    spec = _spec(tmp_path, datasets=datasets, common_opts=["TEST.EVAL_PERIOD", 50])
    out, res = tmp_path / "out", tmp_path / "results"
    ablation.run_ablation(spec, str(out / "d0"), runner=Trainer(), only=["tuned_static"], seeds=[1],
                          results_dir=str(res / "d0"))
    cli.main(["--spec", spec["_path"], "--out", str(out), "--results", str(res), "--dry-run", "--data", "d0_long"])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [_arg(c, "OUTPUT_DIR") for c in lines] == [str(out / "d0_long" / "tuned_static" / f"seed{s}") for s in (1, 4)]
    assert lines[0][lines[0].index("TEST.EVAL_PERIOD"):lines[0].index("MODEL.GALW.WEIGHTING")] == [
        "TEST.EVAL_PERIOD", "50", "SOLVER.MAX_ITER", "300"]
    long = ablation.load_spec(spec["_path"])
    data = ablation.label_dataset(long, "d0_long")
    borrowed = ablation.borrowed_search(long, data, str(out), str(res))
    assert borrowed["best"] == "mid"
    assert [str(o) for o in long["common_opts"]] == ["TEST.EVAL_PERIOD", "50", "SOLVER.MAX_ITER", "300"]
    trainer = Trainer()
    outcome = ablation.run_ablation(long, str(out / "d0_long"), runner=trainer, only=data["variants"],
                                    results_dir=str(res / "d0_long"), search=borrowed)
    assert outcome["failed"] == [] and [(n, s) for n, s, _ in trainer.calls] == [("tuned_static", 1), ("tuned_static", 4)]
    assert all(_arg(c, "SOLVER.MAX_ITER") == "300" and _arg(c, "MODEL.GALW.MANUAL_WEIGHTS") == "[1.0, 4.0, 1.0]"
               for _, _, c in trainer.calls)
    kept = read_result(str(res / "d0_long" / "tuned_static" / "seed4.json"))["data"]
    assert kept["opts"][:4] == ["TEST.EVAL_PERIOD", "50", "SOLVER.MAX_ITER", "300"]
    block = ablation.docs_markdown("d0_long", str(res), spec["_path"])
    assert "Common overrides: `TEST.EVAL_PERIOD 50 SOLVER.MAX_ITER 300`" in block
    assert "<sub>2 of 2 planned result files (0 of the weight search)" in block
    for bad, match in ((dict(datasets[1], opts=["SOLVER.MAX_ITER"]), r"datasets\[1\].opts: expected a list of KEY VALUE"),
                       (dict(datasets[1], seeds=[]), r"datasets\[1\].seeds: expected a non-empty list of integers")):
        with pytest.raises(ValueError, match=match):
            _spec(tmp_path, datasets=[datasets[0], bad])
