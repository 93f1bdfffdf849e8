"""galw.ablation and galw.data.id_val through their public functions, with runners that write what a
finished training leaves (metrics.json, inference/search_*.json, galw_groups.json) instead of training:
failures and retries, result files and their copies, the weight search, convergence on short curves,
the identity split's edge cases."""
import json
import math
import os

import pytest
import yaml

from galw import ablation
from galw.ablation.convergence import run_convergence, variant_convergence
from galw.ablation.runner import finished_runs, run_search
from galw.ablation.search import choose, plan_search
from galw.data.id_val import held_out_ids, register_id_val, split_by_identity
from galw.results import read_result

VAL = ["DATASETS.TRAIN", "('synth_prw_idval_train',)", "DATASETS.TEST", "('synth_prw_idval_gallery',)"]
CANDIDATES = [{"name": "low", "weights": [1, 1]}, {"name": "high", "weights": [1, 3]}]


def _spec(tmp_path, **over):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  DEVICE: cpu\n")
    spec = {"base_config": str(base), "seeds": [1, 2], "common_opts": ["SOLVER.MAX_ITER", 10],
            "variants": [{"name": "equal", "opts": ["MODEL.GALW.ENABLED", False]},
                         {"name": "galw_g2", "opts": ["MODEL.GALW.NUM_GROUPS", 2]}]}
    spec.update(over)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ablation.load_spec(str(path))


def _search_spec(tmp_path, **over):
    search = {"seeds": [1, 2], "candidates": CANDIDATES, "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]}
    variants = [{"name": "equal", "opts": ["MODEL.GALW.ENABLED", False]},
                {"name": "tuned_static", "opts": ["MODEL.GALW.WEIGHTING", "manual",
                                                  "MODEL.GALW.MANUAL_WEIGHTS", "{tuned_weights}"]}]
    return _spec(tmp_path, search=search, variants=variants, **over)


def _arg(cmd, key):
    return cmd[cmd.index(key) + 1] if key in cmd else None


class Runner:
    """Stands in for train_net.py. ``plan``: (name, seed) -> exit code (nonzero: fails, writes nothing),
    "empty" (exits 0, writes no metrics) or "nan" (a diverged top-10); otherwise it writes a curve that
    ends at mAP = 40 + seed (+ 10 x the second manual weight for a search run)."""

    def __init__(self, plan=None):
        self.plan, self.calls = dict(plan or {}), []

    def __call__(self, cmd, out_dir):
        name, seed = os.path.basename(os.path.dirname(out_dir)), int(_arg(cmd, "SEED"))
        self.calls.append((name, seed))
        what = self.plan.get((name, seed))
        if isinstance(what, int):
            return what
        os.makedirs(out_dir, exist_ok=True)
        if what == "empty":
            return 0
        weights = _arg(cmd, "MODEL.GALW.MANUAL_WEIGHTS")
        m_ap = 40.0 + seed + (10 * json.loads(weights)[1] if weights and weights.startswith("[") else 0)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            f.write(json.dumps({"iteration": 5, "galw/sigma/g0": 1.0, "galw/weight/loss_a": float("nan")}) + "\n")
            f.write(json.dumps({"iteration": 8, "v/search/mAP": m_ap - 1, "v/search/top1": m_ap + 10}) + "\n")
            top10 = float("nan") if what == "nan" else m_ap + 20
            f.write(json.dumps({"iteration": 10, "v/search/mAP": m_ap, "v/search/top1": m_ap + 10,
                                "v/search/top10": top10}) + "\n")
        return 0


# -- runner.py -------------------------------------------------------------------------------------------


def test_failures_of_every_kind_are_reported_and_only_those_retried(tmp_path):
    spec = _spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "res")
    runner = Runner({("equal", 1): 3, ("galw_g2", 2): "empty"})
    outcome = ablation.run_ablation(spec, out, runner=runner, results_dir=res)
    assert runner.calls == [("equal", 1), ("galw_g2", 1), ("equal", 2), ("galw_g2", 2)]
    failed = {(f["name"], f["seed"]): f["reason"] for f in outcome["failed"]}
    assert failed[("equal", 1)] == "exit code 3"
    assert failed[("galw_g2", 2)].startswith(os.path.join(out, "galw_g2", "seed2") + ": no inference/search_*.json")
    assert sorted((r["name"], r["seed"], r["mAP"]) for r in outcome["results"]) == [
        ("equal", 2, 42.0), ("galw_g2", 1, 41.0)]
    assert outcome["search"] is None
    # a failed run leaves no result file and no copy; a finished one leaves both, identical
    assert not os.path.exists(os.path.join(res, "equal", "seed1.json"))
    with open(os.path.join(out, "equal", "seed2", ablation.RESULT_FILE), "rb") as a, \
            open(os.path.join(res, "equal", "seed2.json"), "rb") as b:
        assert a.read() == b.read()
    retry = Runner()
    outcome = ablation.run_ablation(spec, out, runner=retry, results_dir=res, jobs=2)
    assert sorted(retry.calls) == [("equal", 1), ("galw_g2", 2)]
    assert outcome["failed"] == [] and len(outcome["results"]) == 4
    assert [(r["name"], r["seed"]) for r in outcome["results"]] == [
        ("equal", 1), ("galw_g2", 1), ("equal", 2), ("galw_g2", 2)]


def test_a_missing_base_config_or_bad_jobs_stops_before_training(tmp_path):
    spec = _spec(tmp_path)
    runner = Runner()
    os.remove(spec["base_config"])
    with pytest.raises(FileNotFoundError, match="base_config '.*base.yaml' does not exist"):
        ablation.run_ablation(spec, str(tmp_path / "out"), runner=runner)
    spec = _spec(tmp_path)
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        ablation.run_ablation(spec, str(tmp_path / "out"), runner=runner, jobs=0)
    assert runner.calls == []


def test_a_regroup_that_cannot_read_its_source_is_a_failure_not_a_crash(tmp_path):
    src = {"variant": "galw_g4", "groups_file": "phase1/galw_groups.json", "num_groups": 2}
    spec = _spec(tmp_path, variants=[{"name": "galw_g4", "opts": []},
                                     {"name": "galw_g2", "opts": [], "groups_from": src}], seeds=[1])
    outcome = ablation.run_ablation(spec, str(tmp_path / "out"), runner=Runner())
    # galw_g4 finished but left no phase-one groups file, so galw_g2 cannot regroup
    assert [(f["name"], f["seed"]) for f in outcome["failed"]] == [("galw_g2", 1)]
    assert "galw_groups.json" in outcome["failed"][0]["reason"]
    assert [r["name"] for r in outcome["results"]] == ["galw_g4"]
    # a source that failed: its dependant is not tried
    runner = Runner({("galw_g4", 2): 1})
    outcome = ablation.run_ablation(spec, str(tmp_path / "out"), runner=runner, seeds=[2])
    assert runner.calls == [("galw_g4", 2)]
    assert [(f["name"], f["reason"]) for f in outcome["failed"]] == [
        ("galw_g4", "exit code 1"), ("galw_g2", "groups_from run galw_g4 did not finish")]


def test_subprocess_runner_sets_the_thread_count(tmp_path):
    import sys

    show = "import os, sys; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS']); sys.exit(4)"
    assert ablation.subprocess_runner([sys.executable, "-c", show], str(tmp_path / "r"), threads=3) == 4
    assert (tmp_path / "r" / "ablation_log.txt").read_text().split() == ["3", "3"]


def test_dry_run_commands_name_the_regroup_and_pass_extra_args(tmp_path):
    src = {"variant": "equal", "groups_file": "phase1/g.json", "num_groups": 2}
    spec = _spec(tmp_path, variants=[{"name": "equal", "opts": ["A", 1]},
                                     {"name": "g2", "opts": ["B", "{seed}"], "groups_from": src}])
    out = str(tmp_path / "o")
    cmds = ablation.dry_run_commands(spec, out, only=["g2"], seeds=[4], extra_args=["--num-gpus", "2"])
    assert len(cmds) == 2
    assert cmds[0][3:] == [spec["base_config"], "--num-gpus", "2", "OUTPUT_DIR", os.path.join(out, "equal", "seed4"),
                           "SEED", "4", "SOLVER.MAX_ITER", "10", "A", "1"]
    assert cmds[1][-2:] == ["MODEL.GALW.GROUPS_FILE",
                            "<regrouped from " + os.path.join(out, "equal", "seed4", "phase1", "g.json") + ">"]
    assert _arg(cmds[1], "B") == "4"
    # without a tuned variant no search command is listed
    assert all("MODEL.GALW.MANUAL_WEIGHTS" not in c for c in cmds)


def test_finished_runs_reads_runs_or_copies_and_trains_nothing(tmp_path):
    spec = _search_spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "res")
    runner = Runner({("high", 2): 1})
    ablation.run_ablation(spec, out, runner=runner, results_dir=res)
    before = list(runner.calls)
    got = finished_runs(spec, out, results_dir=res)
    assert sorted((r["name"], r["seed"]) for r in got["results"]) == [("equal", 1), ("equal", 2)]
    assert got["not_run"] == [{"name": "tuned_static", "seed": 1}, {"name": "tuned_static", "seed": 2}]
    assert got["failed"] == [] and got["search"]["complete"] is False
    assert got["search"]["candidates"][1]["seeds"] == [1]
    # from the copies alone, the run folders gone
    import shutil

    shutil.rmtree(out)
    copies = finished_runs(spec, out, results_dir=res, read=ablation.committed_result)
    assert sorted((r["name"], r["seed"], r["mAP"]) for r in copies["results"]) == [
        ("equal", 1, 41.0), ("equal", 2, 42.0)]
    assert [c["mAP"] for c in copies["search"]["candidates"]] == [[51.0, 52.0], [71.0]]
    assert finished_runs(spec, out)["results"] == []
    assert runner.calls == before


def test_report_from_the_copies_alone(tmp_path):
    spec = _search_spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "res")
    ablation.run_ablation(spec, out, runner=Runner(), results_dir=res)
    import shutil

    shutil.rmtree(out)
    outcome = finished_runs(spec, out, results_dir=res, read=ablation.committed_result)
    assert outcome["not_run"] == [] and outcome["search"]["best"] == "high"
    rows = ablation.write_tables(spec, outcome, res, figures=False)
    assert [(r["name"], r["runs"], r["seeds"]) for r in rows] == [("equal", 2, [1, 2]), ("tuned_static", 2, [1, 2])]
    md = open(os.path.join(res, "ablation.md")).read()
    assert "| equal |  | 2 | 41.50 ± 0.71 |" in md
    assert "| tuned_static |  | 2 | 71.50 ± 0.71 |" in md
    assert "search candidate `high` [1.0, 3.0] (validation mAP 71.50" in md
    saved = json.load(open(os.path.join(res, "ablation.json")))
    assert saved["search"]["weights"] == [1.0, 3.0]
    assert [v["mAP"] for v in saved["variants"]] == [[41.0, 42.0], [71.0, 72.0]]
    assert not os.path.exists(out)


def test_a_report_refuses_kept_files_of_another_plan(tmp_path):
    """A report shows a kept file as its planned run only when it records the planned opts, config files
    and searched weights, as a reused result must (runner.check_result)."""
    spec = _search_spec(tmp_path)
    out, res = str(tmp_path / "out"), str(tmp_path / "res")
    ablation.run_ablation(spec, out, runner=Runner(), results_dir=res)
    longer = _search_spec(tmp_path, common_opts=["SOLVER.MAX_ITER", 20])
    with pytest.raises(ValueError, match=r"search/low/seed1.json: was trained with other opts than planned "
                                         r"\(SOLVER.MAX_ITER: trained 10, planned 20\)"):
        finished_runs(longer, out, results_dir=res, read=ablation.committed_result)
    with pytest.raises(ValueError, match=r"out/equal/seed1/ablation_result.json: was trained with other opts"):
        finished_runs(_spec(tmp_path, common_opts=["SOLVER.MAX_ITER", 20]), out)
    # the search's kept files now score "low" best: tuned_static's copies hold "high"'s weights
    for seed in (1, 2):
        path = os.path.join(res, "search", "high", f"seed{seed}.json")
        doc = read_result(path)
        doc["data"]["mAP"] = 1.0
        with open(path, "w") as f:
            json.dump(doc, f)
    with pytest.raises(ValueError, match=r"tuned_static/seed1.json: was trained with other opts than planned "
                                         r"\(MODEL.GALW.MANUAL_WEIGHTS: trained \[1.0, 3.0\], planned \[1.0, 1.0\]\)"):
        finished_runs(spec, str(tmp_path / "gone"), results_dir=res, read=ablation.committed_result)
    # an incomplete search: the weights are unknown, and the kept tuned_static files say so
    os.remove(os.path.join(res, "search", "low", "seed1.json"))
    with pytest.raises(ValueError, match=r"tuned_static seed 1 has a result .* but the weight search is not "
                                         r"complete: the weights it had to train with are unknown"):
        finished_runs(spec, str(tmp_path / "gone"), results_dir=res, read=ablation.committed_result)


def test_run_search_alone_picks_the_best_and_fills_tuned_static(tmp_path):
    spec = _search_spec(tmp_path)
    out = str(tmp_path / "out")
    runner = Runner()
    got = run_search(spec, out, runner)
    assert got["failed"] == [] and got["complete"] is True
    assert (got["best"], got["weights"]) == ("high", [1.0, 3.0])
    assert got["score"] == pytest.approx(71.5)
    assert [c["score"] for c in got["candidates"]] == pytest.approx([51.5, 71.5])
    assert runner.calls == [("low", 1), ("high", 1), ("low", 2), ("high", 2)]
    # the candidates' result files hold their weights; run_ablation then trains only the variants
    data = read_result(os.path.join(out, "search", "high", "seed2", ablation.RESULT_FILE))["data"]
    assert data["weights"] == [1.0, 3.0] and data["mAP"] == 72.0
    outcome = ablation.run_ablation(spec, out, runner=runner)
    assert runner.calls[4:] == [("equal", 1), ("tuned_static", 1), ("equal", 2), ("tuned_static", 2)]
    tuned = read_result(os.path.join(out, "tuned_static", "seed1", ablation.RESULT_FILE))["data"]
    assert tuned["opts"] == ["SOLVER.MAX_ITER", "10", "MODEL.GALW.WEIGHTING", "manual",
                             "MODEL.GALW.MANUAL_WEIGHTS", "[1.0, 3.0]"]
    assert outcome["search"]["best"] == "high" and outcome["failed"] == []


def test_a_reordered_but_equal_set_of_opts_still_counts_as_different(tmp_path):
    """The recorded opts are compared as a list; when every key has the same value the message
    gives both lists."""
    spec = _spec(tmp_path, seeds=[1], variants=[{"name": "equal", "opts": ["A", 1, "B", 2]}])
    out = str(tmp_path / "out")
    ablation.run_ablation(spec, out, runner=Runner())
    swapped = _spec(tmp_path, seeds=[1], variants=[{"name": "equal", "opts": ["B", 2, "A", 1]}])
    with pytest.raises(ValueError, match=r"other opts than planned \(trained \['SOLVER.MAX_ITER', '10', 'A', '1', "
                                         r"'B', '2'\], planned \['SOLVER.MAX_ITER', '10', 'B', '2', 'A', '1'\]\)"):
        ablation.run_ablation(swapped, out, runner=Runner())


# -- run_result.py ---------------------------------------------------------------------------------------


def test_result_data_drops_non_finite_values_and_keeps_trajectories(tmp_path):
    spec = _spec(tmp_path, seeds=[1], variants=[{"name": "equal", "opts": []}])
    out = str(tmp_path / "out")
    outcome = ablation.run_ablation(spec, out, runner=Runner({("equal", 1): "nan"}))
    data = outcome["results"][0]
    assert (data["mAP"], data["top1"]) == (41.0, 51.0) and "top10" not in data
    assert data["source"] == "metrics.json"  # relative to the run's folder
    assert [(p["iteration"], p["mAP"]) for p in data["curve"]] == [(8, 40.0), (10, 41.0)]
    assert data["trajectories"]["sigma"] == {"g0": {"iteration": [5], "value": [1.0]}}
    assert data["trajectories"]["weight"]["loss_a"]["value"] == [None]
    assert data["trajectories"]["group_weight"] == {}
    assert data["groups"] is None and "weights" not in data


def test_collect_metrics_reads_one_search_json_or_says_what_is_missing(tmp_path):
    inf = tmp_path / "inference"
    inf.mkdir()
    (inf / "search_a.json").write_text(json.dumps({"metrics": {"search": {"mAP": 30.5, "top1": 70.0},
                                                               "detection": {"AP": 61.0}, "note": "x"}}))
    got = ablation.collect_metrics(str(tmp_path))
    assert got == {"mAP": 30.5, "top1": 70.0, "det_AP": 61.0, "source": str(inf / "search_a.json")}
    (inf / "search_a.json").write_text(json.dumps({"metrics": {"search": {"mAP": 30.5}}}))
    with pytest.raises(ValueError, match="search_a.json: expected metrics.search.mAP and metrics.search.top1"):
        ablation.collect_metrics(str(tmp_path))
    (inf / "search_b.json").write_text("{}")
    with pytest.raises(ValueError, match=r"several search JSONs \['search_a.json', 'search_b.json'\]"):
        ablation.collect_metrics(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.json").write_text(json.dumps({"iteration": 1, "total_loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no inference/search_\\*.json and no search/mAP, search/top1 line"):
        ablation.collect_metrics(str(empty))


def test_metrics_curve_keeps_only_evaluations_with_both_figures():
    records = [{"iteration": 1, "a/search/mAP": 10.0}, {"iteration": 2, "a/search/mAP": 11.0, "a/search/top1": 20},
               {"iteration": 3, "search/mAP": math.inf, "search/top1": 21.0}, {"iteration": 4, "total_loss": 2.0}]
    assert ablation.metrics_curve(records) == [{"mAP": 11.0, "top1": 20.0, "iteration": 2}]


def test_run_groups_needs_every_field(tmp_path):
    assert ablation.run_groups(str(tmp_path)) is None
    (tmp_path / "galw_groups.json").write_text(json.dumps({"groups": [["a"], ["b"]], "num_groups": 2}))
    with pytest.raises(ValueError, match=r"galw_groups.json: missing field\(s\) \['linkage', 's_star'\]"):
        ablation.run_groups(str(tmp_path))
    (tmp_path / "galw_groups.json").write_text(json.dumps(
        {"groups": [["a"], ["b"]], "num_groups": 2, "linkage": "ward", "s_star": {"0": 1.0}, "extra": 1}))
    assert ablation.run_groups(str(tmp_path)) == {"groups": [["a"], ["b"]], "num_groups": 2, "linkage": "ward",
                                                  "s_star": {"0": 1.0}, "file": str(tmp_path / "galw_groups.json")}


def test_save_result_and_copies(tmp_path):
    out_dir = tmp_path / "out" / "equal" / "seed3"
    out_dir.mkdir(parents=True)
    run = {"name": "equal", "seed": 3, "out_dir": str(out_dir), "result_copy": None, "weights": [1, 2]}
    data = {"name": "equal", "seed": 3, "mAP": 1.5, "weights": [1, 2]}
    path = ablation.save_result(run, data, ["python", "train_net.py", "SEED", "3"])
    assert path == str(out_dir / ablation.RESULT_FILE)
    assert read_result(path)["data"] == data
    assert ablation.saved_result(run) == data
    assert ablation.committed_result(run) is None  # no copy asked for
    copy = tmp_path / "res" / "equal" / "seed3.json"
    run["result_copy"] = str(copy)
    assert ablation.committed_result(run) is None  # asked for, not written yet
    ablation.keep_copy(run)
    assert ablation.committed_result(run) == data
    assert ablation.saved_result(dict(run, out_dir=str(tmp_path / "nowhere"))) is None
    copy.write_text("{}")
    with pytest.raises(ValueError, match="seed3.json: the kept copy differs from the run's result file"):
        ablation.keep_copy(run)
    assert copy.read_text() == "{}"


# -- search.py -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("search, message", [
    ([1, 2], "search: expected a mapping with seeds, opts, candidates"),
    ({"seeds": [1]}, "search: expected a mapping with seeds, opts, candidates"),
    ({"seeds": [1], "candidates": CANDIDATES, "opts": ["A"]}, r"search.opts: odd number of opts"),
    ({"seeds": [], "candidates": CANDIDATES, "opts": VAL}, r"search.seeds: expected a non-empty list of integers"),
    ({"seeds": ["1"], "candidates": CANDIDATES, "opts": VAL}, r"search.seeds: .* got \['1'\]"),
    ({"seeds": [1], "candidates": CANDIDATES, "opts": ["DATASETS.TEST", "('x_idval_gallery'"]},
     r"DATASETS.TEST must be exactly"),
    ({"seeds": [1], "candidates": CANDIDATES, "opts": ["DATASETS.TEST", "[1]"]}, r"DATASETS.TEST must be exactly"),
    ({"seeds": [1], "candidates": CANDIDATES, "opts": ["DATASETS.TEST", "('_idval_gallery',)"]},
     r"DATASETS.TEST must be exactly"),
    ({"seeds": [1], "candidates": CANDIDATES, "opts": VAL}, r"WEIGHTING must be manual"),
    ({"seeds": [1], "candidates": CANDIDATES, "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL[2:]]},
     r"DATASETS.TRAIN must be exactly \('synth_prw_idval_train',\)"),
    ({"seeds": [1], "candidates": [{"name": "a"}, CANDIDATES[1]], "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]},
     r"candidates\[0\]: needs 'name' and 'weights'"),
    ({"seeds": [1], "candidates": [CANDIDATES[0], {"name": "b", "weights": []}],
      "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]}, r"candidates\[1\] \(b\): weights must be a list"),
    ({"seeds": [1], "candidates": [CANDIDATES[0], CANDIDATES[0]], "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]},
     r"candidates\[1\]: name 'low' repeated or not a plain folder name"),
    ({"seeds": [1], "candidates": [CANDIDATES[0], {"name": "a/b", "weights": [1, 1]}],
      "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]}, r"candidates\[1\]: name 'a/b' repeated"),
    ({"seeds": [1], "candidates": CANDIDATES[:1], "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]},
     r"candidates: expected 2\+ candidates, all of one length, got lengths \[2\]"),
    ({"seeds": [1], "candidates": [CANDIDATES[0], {"name": "c", "weights": [1, 2, 3]}],
      "opts": ["MODEL.GALW.WEIGHTING", "manual", *VAL]}, r"got lengths \[2, 3\]"),
])
def test_search_section_errors_name_the_field(tmp_path, search, message):
    with pytest.raises(ValueError, match="spec.yaml: search" + ".*" + message if not message.startswith("search")
                       else "spec.yaml: " + message):
        _spec(tmp_path, search=search)


def test_plan_search_and_choose(tmp_path):
    spec = _search_spec(tmp_path, seeds=[1])
    spec["search"]["opts"] = spec["search"]["opts"] + ["MODEL.GALW.RANDOM_SEED", "{seed}"]
    runs = plan_search(spec, str(tmp_path / "o"), str(tmp_path / "r"))
    assert [(r["name"], r["seed"]) for r in runs] == [("low", 1), ("high", 1), ("low", 2), ("high", 2)]
    assert runs[3]["opts"][-4:] == ["MODEL.GALW.RANDOM_SEED", "2", "MODEL.GALW.MANUAL_WEIGHTS", "[1.0, 3.0]"]
    assert runs[3]["result_copy"] == str(tmp_path / "r" / "search" / "high" / "seed2.json")
    assert plan_search(spec, "o")[0]["result_copy"] is None
    assert ablation.weights_text([1, 2.5]) == "[1.0, 2.5]"
    res = [{"name": "low", "seed": 1, "mAP": 10.0}, {"name": "low", "seed": 2, "mAP": 20.0},
           {"name": "high", "seed": 2, "mAP": 15.0}, {"name": "high", "seed": 1, "mAP": 15.0},
           {"name": "high", "seed": 9, "mAP": 99.0}, {"name": "other", "seed": 1, "mAP": 99.0}]
    got = choose(spec, res)
    # a tie goes to the first in spec order; a seed outside the search's is not counted
    assert (got["best"], got["weights"], got["score"], got["complete"]) == ("low", [1.0, 1.0], 15.0, True)
    assert got["candidates"][1] == {"name": "high", "weights": [1.0, 3.0], "seeds": [1, 2], "mAP": [15.0, 15.0],
                                    "score": 15.0}
    partial = choose(spec, res[:3])
    assert (partial["best"], partial["weights"], partial["score"], partial["complete"]) == (None, None, None, False)
    assert partial["candidates"][1]["score"] is None and partial["candidates"][0]["score"] == 15.0


# -- convergence.py --------------------------------------------------------------------------------------


def test_convergence_on_short_and_empty_curves():
    empty = run_convergence([])
    assert empty == {"start": None, "end": None, "evaluations": 0, "value_at_start": None, "last": None,
                     "range": None, "drift": None}
    assert run_convergence([{"iteration": None, "mAP": 3.0}, {"iteration": 5, "mAP": None}]) == empty
    one = run_convergence([{"iteration": 100, "mAP": 30.0}])
    assert (one["start"], one["end"], one["evaluations"], one["last"], one["range"]) == (80.0, 100.0, 1, 30.0, None)
    # two points: the window's start interpolated between them
    two = run_convergence([{"iteration": 100, "mAP": 40.0}, {"iteration": 0, "mAP": 20.0}])
    assert two["value_at_start"] == pytest.approx(36.0)
    assert (two["range"], two["drift"], two["evaluations"]) == (pytest.approx(4.0), pytest.approx(4.0), 1)
    # an evaluation exactly at the start, another on top1
    curve = [{"iteration": 80, "mAP": 10.0, "top1": 5.0}, {"iteration": 100, "mAP": 9.5, "top1": 8.0}]
    assert run_convergence(curve)["drift"] == pytest.approx(-0.5)
    assert run_convergence(curve, key="top1")["range"] == pytest.approx(3.0)


def test_convergence_window_starts_at_detectron2s_evaluation_after_80_percent():
    """EvalHook records the evaluation after 1600 of 2000 iterations at iteration 1599 and the final one
    at 2000: the window runs from the first, so a run that moved exactly 1 point has not converged."""
    curve = [{"iteration": i, "mAP": v} for i, v in ((399, 20.0), (799, 40.0), (1199, 48.0), (1599, 50.0),
                                                     (2000, 51.0))]
    got = run_convergence(curve)
    assert (got["start"], got["value_at_start"], got["evaluations"]) == (1600.0, 50.0, 1)
    assert (got["range"], got["drift"]) == (1.0, 1.0)
    assert variant_convergence([{"name": "equal", "seed": 1, "curve": curve}], "equal")["converged"] is False
    long = [{"iteration": i, "mAP": v} for i, v in ((1199, 30.0), (2399, 40.0), (3599, 45.0), (4799, 52.5),
                                                    (6000, 52.0))]
    assert (run_convergence(long)["value_at_start"], run_convergence(long)["drift"]) == (52.5, -0.5)


def test_variant_convergence_with_a_curve_that_cannot_say():
    results = [{"name": "equal", "seed": 2, "curve": [{"iteration": 100, "mAP": 1.0}]},
               {"name": "equal", "seed": 1, "curve": [{"iteration": 80, "mAP": 10.0}, {"iteration": 100, "mAP": 10.5}]},
               {"name": "other", "seed": 1}]
    got = variant_convergence(results, "equal")
    assert list(got["runs"]) == [1, 2]
    assert (got["worst_seed"], got["worst_range"], got["converged"]) == (1, pytest.approx(0.5), None)
    assert variant_convergence(results, "missing") == {"name": "missing", "runs": {}, "worst_seed": None,
                                                       "worst_range": None, "max_abs_drift": None,
                                                       "converged": None}
    assert variant_convergence(results, "other")["runs"][1]["range"] is None
    moving = [{"name": "equal", "seed": 1, "curve": [{"iteration": 80, "mAP": 10.0}, {"iteration": 100, "mAP": 12.0}]}]
    assert variant_convergence(moving, "equal")["converged"] is False


def test_convergence_of_a_spec_without_its_baseline(tmp_path):
    spec = _spec(tmp_path)
    results = [{"name": "galw_g2", "seed": 1, "curve": [{"iteration": 80, "mAP": 1.0}, {"iteration": 100, "mAP": 1.2}]}]
    got = ablation.convergence(spec, results)
    assert [v["name"] for v in got["variants"]] == ["galw_g2"]
    assert (got["baseline"], got["baseline_converged"], got["key"]) == ("equal", None, "mAP")
    assert got["variants"][0]["converged"] is True


# -- data/id_val.py --------------------------------------------------------------------------------------


def _rec(name, cam, pids):
    return {"file_name": f"/d/{name}.jpg", "image_id": name, "height": 10, "width": 10, "camera_id": cam,
            "annotations": [{"bbox": [float(i), 0.0, i + 1.0, 2.0], "person_id": p} for i, p in enumerate(pids)]}


def test_held_out_ids_edge_cases():
    assert held_out_ids(range(25)) == {9, 19}
    assert held_out_ids([5, 3, 7]) == {7}  # fewer than `every` identities: the last one
    assert held_out_ids([-1, 4, 2], every=3) == {4}
    with pytest.raises(ValueError, match="needs 2\\+ training identities, got 0"):
        held_out_ids([])


def test_split_keeps_two_cameras_per_identity_and_unlabeled_people():
    # identity 1 is held out (every=2 over {0, 1}); it is seen in four images from three cameras
    records = [_rec("a", 1, [1, -1]), _rec("b", 1, [1]), _rec("c", 2, [1, 0]), _rec("d", 3, [1]),
               _rec("e", 4, [0, -1])]
    records[4].pop("camera_id")
    train, gallery, queries, num_pids = split_by_identity(records, every=2)
    assert [r["image_id"] for r in train] == ["e"] and num_pids == 1
    assert [a["person_id"] for a in train[0]["annotations"]] == [0, -1]
    assert [[a["person_id"] for a in r["annotations"]] for r in gallery] == [[1, -1], [1], [1, -1], [1]]
    # first image in each of two cameras (b: same camera as a; d: a third camera)
    assert [(q["image_id"], q["camera_id"], q["query"]) for q in queries] == [
        ("a", 1, {"bbox": [0.0, 0.0, 1.0, 2.0], "person_id": 1}),
        ("c", 2, {"bbox": [0.0, 0.0, 1.0, 2.0], "person_id": 1})]
    # an image without a camera counts as camera -1 and has no camera_id field in its query
    records = [{k: v for k, v in _rec(n, 0, [1, 0] if n == "x" else [1]).items() if k != "camera_id"}
               for n in ("x", "y")] + [_rec("z", 0, [0])]
    _, _, queries, _ = split_by_identity(records, every=2)
    assert [(q["image_id"], "camera_id" in q) for q in queries] == [("x", False)]


@pytest.mark.parametrize("records, message", [
    ([], "needs 2\\+ training identities, got 0"),
    ([_rec("a", 1, [0, 0])], "needs 2\\+ training identities, got 1"),
    ([_rec("a", 1, [0, 1]), _rec("b", 2, [0])], r"none of the held-out identities \[1\] appears in two images"),
    ([{"file_name": "/d/a.jpg", "annotations": [{"bbox": [0, 0, 1, 1]}]}],
     "/d/a.jpg: annotation 0 has person_id '<missing>'; expected every annotation to have an integer person_id"),
    ([{"image_id": 7, "annotations": [{"person_id": 0}, {"person_id": "x"}]}], "7: annotation 1 has person_id 'x'"),
])
def test_split_errors(records, message):
    with pytest.raises(ValueError, match=message):
        split_by_identity(records, every=2)


def test_register_id_val_needs_its_base_and_sets_num_pids():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    with pytest.raises(KeyError, match="'no_such_prefix_train' is not registered"):
        register_id_val("no_such_prefix")
    prefix = "idval_paths"
    names = [f"{prefix}_train", *(f"{prefix}_idval_{p}" for p in ("train", "gallery", "query"))]
    records = [_rec("a", 1, [0, 1]), _rec("b", 2, [1]), _rec("c", 1, [0, 2]), _rec("d", 1, [3])]
    try:
        DatasetCatalog.register(f"{prefix}_train", lambda: records)
        register_id_val(prefix, every=2)
        assert MetadataCatalog.get(f"{prefix}_idval_gallery").query_set == f"{prefix}_idval_query"
        assert MetadataCatalog.get(f"{prefix}_idval_query").gallery_set == f"{prefix}_idval_gallery"
        assert MetadataCatalog.get(f"{prefix}_idval_train").evaluator_type == "prw"
        # held out: 1 and 3; training keeps 0, 2 (relabelled 0, 1) in image c only
        train = DatasetCatalog.get(f"{prefix}_idval_train")
        assert [r["image_id"] for r in train] == ["c"]
        assert MetadataCatalog.get(f"{prefix}_idval_train").num_pids == 2
        assert [q["image_id"] for q in DatasetCatalog.get(f"{prefix}_idval_query")] == ["a", "b"]
        assert [r["image_id"] for r in DatasetCatalog.get(f"{prefix}_idval_gallery")] == ["a", "b", "d"]
        # a base whose split is impossible: the error names the split and its base
        records[:] = [_rec("a", 1, [0, 1])]
        with pytest.raises(ValueError, match=f"{prefix}_idval_gallery \\(the validation split by identity of "
                                             f"'{prefix}_train'\\): validation split: none of the held-out"):
            DatasetCatalog.get(f"{prefix}_idval_gallery")
    finally:
        for name in names:
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            if name in MetadataCatalog.list():
                MetadataCatalog.remove(name)
