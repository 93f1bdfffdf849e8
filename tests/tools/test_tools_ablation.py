"""galw.ablation and tools/ablation.py: planning, resumable orchestration with an injected runner,
the runs' result files, table maths."""
import importlib.util
import json
import os
import re
import shlex
import shutil

import pytest
from conftest import ROOT

from galw import ablation
from galw.ablation.runner import dependency_chains, run_opts
from galw.results import read_result

_cli_spec = importlib.util.spec_from_file_location("galw_tools_ablation", os.path.join(ROOT, "tools", "ablation.py"))
cli = importlib.util.module_from_spec(_cli_spec)
_cli_spec.loader.exec_module(cli)

# (variant, seed) -> (mAP, top1) that the fake training "reaches".
FAKE = {("equal", 1): (50.0, 80.0), ("equal", 2): (52.0, 81.0), ("equal", 3): (54.0, 82.5),
        ("galw_g4", 1): (60.0, 90.0), ("galw_g4", 2): (61.0, 90.0), ("galw_g4", 3): (65.0, 93.0),
        ("galw_g2", 1): (58.0, 88.0), ("galw_g2", 2): (57.0, 87.0), ("galw_g2", 3): (59.0, 89.0)}
HISTORY = {"loss_a": [3.0, 2.0], "loss_b": [1.0, 1.5], "loss_c": [2.0, 2.0]}


def _write_spec(tmp_path, seeds=(1, 2, 3)):
    import yaml

    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  DEVICE: cpu\n")
    spec = {
        "base_config": str(base),
        "seeds": list(seeds),
        "common_opts": ["SOLVER.MAX_ITER", 5],
        "variants": [
            {"name": "equal", "tables": ["2", "3"], "opts": ["MODEL.GALW.ENABLED", False]},
            {"name": "galw_g4", "tables": ["4"], "opts": ["MODEL.GALW.NUM_GROUPS", 4,
                                                          "MODEL.GALW.RANDOM_SEED", "{seed}"]},
            {"name": "galw_g2", "tables": ["4"], "opts": ["MODEL.GALW.NUM_GROUPS", 2],
             "groups_from": {"variant": "galw_g4", "groups_file": "phase1/galw_groups.json",
                             "init_weights": "phase1/init.pth", "num_groups": 2}},
        ],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ablation.load_spec(str(path))


def fake_group_tasks(history, num_groups, linkage):
    """Stands in for galw_core.grouping.group_tasks: sorted tasks dealt into num_groups groups."""
    tasks = sorted(history)
    return [tasks[g::num_groups] for g in range(num_groups)]


class FakeTrainer:
    """Stands in for train_net.py: writes what a finished run leaves behind."""

    def __init__(self, fail=(), phase_one_groups=(("loss_a",), ("loss_b",), ("loss_c",))):
        self.calls = []
        self.fail = set(fail)
        self.phase_one_groups = [list(g) for g in phase_one_groups]

    def __call__(self, cmd, out_dir):
        opts = cmd[cmd.index("OUTPUT_DIR"):]
        seed = int(opts[opts.index("SEED") + 1])
        name = os.path.basename(os.path.dirname(out_dir))
        self.calls.append((name, seed, cmd))
        if (name, seed) in self.fail:
            return 1
        os.makedirs(os.path.join(out_dir, "phase1"), exist_ok=True)
        if name == "galw_g4":  # a two-phase GALW run leaves its phase-one files
            with open(os.path.join(out_dir, "phase1", "galw_groups.json"), "w") as f:
                json.dump({"groups": self.phase_one_groups, "num_groups": 3, "linkage": "ward",
                           "gamma_history": HISTORY, "s_star": {}}, f)
            open(os.path.join(out_dir, "phase1", "init.pth"), "w").close()
        if "--galw-phase-one-only" in cmd:
            return 0
        if "MODEL.GALW.GROUPS_FILE" in cmd:  # the GALW hook writes the groups it trains with
            shutil.copy(cmd[cmd.index("MODEL.GALW.GROUPS_FILE") + 1], os.path.join(out_dir, "galw_groups.json"))
        m_ap, top1 = FAKE[(name, seed)]
        records = [{"iteration": 2, "synth_cuhk_gallery/search/mAP": m_ap - 10,
                    "synth_cuhk_gallery/search/top1": top1 - 10, "synth_cuhk_gallery/detection/AP": 70.0},
                   {"iteration": 4, "synth_cuhk_gallery/search/mAP": m_ap, "synth_cuhk_gallery/search/top1": top1}]
        for it, sigma in ((1, 1.0), (3, 0.5)):
            scalars = {"galw/sigma/g0": sigma, "galw/group_weight/g0": 1 / sigma ** 2,
                       "galw/weight/loss_a": 1 / sigma ** 2} if name != "equal" else {}
            records.append({"iteration": it, "total_loss": 1.0, **scalars})
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:  # in iteration order, as detectron2 writes
            f.writelines(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: r["iteration"]))
        return 0


def test_plan_order_and_substitution(tmp_path):
    spec = _write_spec(tmp_path, seeds=(1, 2))
    out = str(tmp_path / "out")
    runs = ablation.plan_runs(spec, out)
    assert [(r["name"], r["seed"]) for r in runs] == [
        ("equal", 1), ("galw_g4", 1), ("galw_g2", 1), ("equal", 2), ("galw_g4", 2), ("galw_g2", 2)]
    g4 = runs[4]
    assert g4["opts"] == ["MODEL.GALW.NUM_GROUPS", "4", "MODEL.GALW.RANDOM_SEED", "2"]
    assert runs[5]["groups_from"] == {
        "variant": "galw_g4", "num_groups": 2,
        "groups_file": os.path.join(out, "galw_g4", "seed2", "phase1", "galw_groups.json"),
        "init_weights": os.path.join(out, "galw_g4", "seed2", "phase1", "init.pth")}
    cmd = ablation.train_command(spec, g4, python="py", extra_opts=["K", "V"])
    assert cmd[:4] == ["py", os.path.join(ROOT, "train_net.py"), "--config-file", spec["base_config"]]
    assert cmd[4:] == ["OUTPUT_DIR", os.path.join(out, "galw_g4", "seed2"), "SEED", "2", "SOLVER.MAX_ITER", "5",
                       "MODEL.GALW.NUM_GROUPS", "4", "MODEL.GALW.RANDOM_SEED", "2", "K", "V"]
    only_g2 = ablation.plan_runs(spec, out, only=["galw_g2"], seeds=[3])
    assert [(r["name"], r["seed"]) for r in only_g2] == [("galw_g4", 3), ("galw_g2", 3)]  # its source first
    with pytest.raises(ValueError, match="no variant"):
        ablation.plan_runs(spec, out, only=["nope"])


def test_runs_regroups_collects_and_resumes(tmp_path):
    spec = _write_spec(tmp_path)
    out = str(tmp_path / "out")
    trainer = FakeTrainer()
    outcome = ablation.run_ablation(spec, out, runner=trainer, group_tasks=fake_group_tasks)
    assert len(trainer.calls) == 9 and outcome["failed"] == []
    assert {(r["name"], r["seed"]): (r["mAP"], r["top1"]) for r in outcome["results"]} == FAKE
    # galw_g2 trains with G = 2 groups of galw_g4's Gamma history, from galw_g4's initial weights.
    g2_cmd = [c for n, s, c in trainer.calls if (n, s) == ("galw_g2", 3)][0]
    groups_file = os.path.join(out, "galw_g2", "seed3", "galw_groups_input.json")
    assert g2_cmd[-4:] == ["MODEL.GALW.GROUPS_FILE", groups_file,
                           "MODEL.WEIGHTS", os.path.join(out, "galw_g4", "seed3", "phase1", "init.pth")]
    with open(groups_file) as f:
        regrouped = json.load(f)
    assert regrouped["groups"] == [["loss_a", "loss_c"], ["loss_b"]] and regrouped["num_groups"] == 2
    assert regrouped["gamma_history"] == HISTORY
    rows = ablation.write_tables(spec, outcome, out)
    assert [r["name"] for r in rows] == ["equal", "galw_g4", "galw_g2"]
    # Resumed: nothing runs again, the same results come back from the result files.
    again = FakeTrainer(fail=set(FAKE))
    outcome2 = ablation.run_ablation(spec, out, runner=again, group_tasks=fake_group_tasks)
    assert again.calls == []
    assert sorted((r["name"], r["seed"], r["mAP"]) for r in outcome2["results"]) == sorted(
        (n, s, v[0]) for (n, s), v in FAKE.items())
    with open(os.path.join(out, "ablation.json")) as f:
        saved = json.load(f)
    assert saved["variants"][0]["mAP"] == [50.0, 52.0, 54.0]
    with open(os.path.join(out, "ablation.md")) as f:
        md = f.read()
    assert "| equal | 2, 3 | 3 | 52.00 ± 2.00 | 81.17 ± 1.26 |" in md
    assert "| galw_g2 | 4 | 3 | 58.00 ± 1.00 | 88.00 ± 1.00 |" in md


def test_failures_are_reported_and_retried(tmp_path):
    spec = _write_spec(tmp_path, seeds=(1, 2))
    out = str(tmp_path / "out")
    outcome = ablation.run_ablation(spec, out, runner=FakeTrainer(fail={("equal", 2), ("galw_g4", 1)}),
                                    group_tasks=fake_group_tasks)
    failed = sorted((f["name"], f["seed"], f["reason"]) for f in outcome["failed"])
    assert failed == [("equal", 2, "exit code 1"), ("galw_g2", 1, "groups_from run galw_g4 did not finish"),
                      ("galw_g4", 1, "exit code 1")]
    assert sorted((r["name"], r["seed"]) for r in outcome["results"]) == [("equal", 1), ("galw_g2", 2),
                                                                          ("galw_g4", 2)]
    assert not os.path.exists(os.path.join(out, "equal", "seed2", ablation.RESULT_FILE))
    retry = FakeTrainer()
    outcome = ablation.run_ablation(spec, out, runner=retry, group_tasks=fake_group_tasks)
    assert sorted((n, s) for n, s, _ in retry.calls) == [("equal", 2), ("galw_g2", 1), ("galw_g4", 1)]
    assert outcome["failed"] == [] and len(outcome["results"]) == 6


def test_a_crash_while_saving_a_result_leaves_no_partial_file(tmp_path, monkeypatch):
    """A result file is complete or absent: a crash in mid-write must not leave a file that the
    resume would then fail to parse."""
    spec = _write_spec(tmp_path, seeds=(1,))
    out = str(tmp_path / "out")

    def crash_before_sync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash_before_sync)  # the temporary file is written, not yet renamed
    with pytest.raises(KeyboardInterrupt):
        ablation.run_ablation(spec, out, runner=FakeTrainer(), only=["equal"], group_tasks=fake_group_tasks)
    result = os.path.join(out, "equal", "seed1", ablation.RESULT_FILE)
    assert not os.path.exists(result)
    assert not [n for n in os.listdir(os.path.dirname(result)) if ".tmp." in n]
    monkeypatch.undo()
    outcome = ablation.run_ablation(spec, out, runner=FakeTrainer(), only=["equal"], group_tasks=fake_group_tasks)
    assert [(r["name"], r["seed"], r["mAP"]) for r in outcome["results"]] == [("equal", 1, 50.0)]
    assert read_result(result)["data"]["top1"] == 80.0


def test_a_run_with_a_result_file_is_not_trained_again_and_its_file_stays_as_it_was(tmp_path):
    spec = _write_spec(tmp_path, seeds=(1, 2))
    out = str(tmp_path / "out")
    first = FakeTrainer()
    ablation.run_ablation(spec, out, runner=first, only=["equal", "galw_g4"], group_tasks=fake_group_tasks)
    assert sorted((n, s) for n, s, _ in first.calls) == [("equal", 1), ("equal", 2), ("galw_g4", 1), ("galw_g4", 2)]
    files = [os.path.join(out, n, f"seed{s}", ablation.RESULT_FILE) for n, s, _ in first.calls]
    before = {}
    for path in files:
        with open(path, "rb") as f:
            before[path] = (f.read(), os.stat(path).st_mtime_ns)
    # the second invocation adds galw_g2 (its source galw_g4 is reused from its result file)
    second = FakeTrainer(fail={k for k in FAKE if k[0] != "galw_g2"})
    outcome = ablation.run_ablation(spec, out, runner=second, group_tasks=fake_group_tasks)
    assert sorted((n, s) for n, s, _ in second.calls) == [("galw_g2", 1), ("galw_g2", 2)]
    assert outcome["failed"] == [] and len(outcome["results"]) == 6
    for path in files:
        with open(path, "rb") as f:
            assert (f.read(), os.stat(path).st_mtime_ns) == before[path], path


def test_result_file_holds_figures_curve_groups_and_trajectories(tmp_path):
    spec = _write_spec(tmp_path, seeds=(3,))
    out = str(tmp_path / "out")
    trainer = FakeTrainer()
    outcome = ablation.run_ablation(spec, out, runner=trainer, group_tasks=fake_group_tasks)
    assert outcome["failed"] == []
    calls = {(n, s): c for n, s, c in trainer.calls}

    g2_dir = os.path.join(out, "galw_g2", "seed3")
    doc = read_result(os.path.join(g2_dir, ablation.RESULT_FILE))
    # the command as run, its paths inside the repository relative to it (no machine's folders)
    words = shlex.split(doc["command"])
    assert words[1] == "train_net.py" and words[2:] == calls[("galw_g2", 3)][2:]
    assert ablation.REPO_ROOT not in doc["command"]
    for key in ("date", "commit", "cpu", "cores", "load_avg_1_5_15", "python", "torch", "detectron2"):
        assert doc["meta"][key] is not None, key
    data = doc["data"]
    assert sorted(data) == ["base_config_sha256", "curve", "groups", "mAP", "name", "opts", "seconds", "seed", "source",
                            "threads", "top1", "trajectories"]
    assert data["base_config_sha256"] == ablation.config_fingerprint(spec)
    assert data["opts"] == ["SOLVER.MAX_ITER", "5", "MODEL.GALW.NUM_GROUPS", "2"]
    assert (data["name"], data["seed"], data["mAP"], data["top1"]) == ("galw_g2", 3, 59.0, 89.0)
    assert data["source"] == "metrics.json" and data["seconds"] >= 0
    assert data["curve"] == [{"iteration": 2, "mAP": 49.0, "top1": 79.0, "det_AP": 70.0},
                             {"iteration": 4, "mAP": 59.0, "top1": 89.0}]
    assert data["groups"] == {"groups": [["loss_a", "loss_c"], ["loss_b"]], "num_groups": 2, "linkage": "ward",
                              "s_star": {}, "file": "galw_groups.json"}
    assert data["trajectories"] == {
        "sigma": {"g0": {"iteration": [1, 3], "value": [1.0, 0.5]}},
        "group_weight": {"g0": {"iteration": [1, 3], "value": [1.0, 4.0]}},
        "weight": {"loss_a": {"iteration": [1, 3], "value": [1.0, 4.0]}}}
    # a two-phase run's groups are its first training's; a plain sum has no groups and no trajectories
    g4 = read_result(os.path.join(out, "galw_g4", "seed3", ablation.RESULT_FILE))["data"]
    assert g4["groups"]["groups"] == [["loss_a"], ["loss_b"], ["loss_c"]]
    assert g4["groups"]["file"] == os.path.join("phase1", "galw_groups.json")
    equal = read_result(os.path.join(out, "equal", "seed3", ablation.RESULT_FILE))["data"]
    assert equal["groups"] is None
    assert equal["trajectories"] == {"sigma": {}, "group_weight": {}, "weight": {}}
    # the study's JSON lists every run's figures, not its curves
    assert not os.path.exists(os.path.join(out, "ablation.json"))  # training writes no tables
    ablation.write_tables(spec, outcome, out)
    with open(os.path.join(out, "ablation.json")) as f:
        runs = json.load(f)["runs"]
    assert runs[2] == {"name": "galw_g2", "seed": 3, "mAP": 59.0, "top1": 89.0, "seconds": data["seconds"],
                       "source": data["source"]}


def test_regroup_needs_the_phase_one_file(tmp_path):
    src = {"variant": "galw_g4", "groups_file": str(tmp_path / "none.json"), "num_groups": 2, "init_weights": None}
    with pytest.raises(FileNotFoundError, match="none.json.*galw_g4"):
        ablation.regroup_from_run(src, str(tmp_path / "o"), fake_group_tasks)
    (tmp_path / "none.json").write_text(json.dumps({"groups": []}))
    with pytest.raises(ValueError, match="none.json.*gamma_history"):
        ablation.regroup_from_run(src, str(tmp_path / "o"), fake_group_tasks)


def test_table_maths_on_hand_values():
    assert ablation.mean_std([50.0, 52.0, 54.0]) == (52.0, 2.0)
    mean, std = ablation.mean_std([80.0, 81.0])
    assert mean == 80.5 and std == pytest.approx(0.5 ** 0.5)
    assert ablation.mean_std([7.0]) == (7.0, None)
    rows = [{"name": "x", "tables": ["4"], "runs": 1, "mAP_mean": 7.0, "mAP_std": None,
             "top1_mean": 9.126, "top1_std": None}]
    assert ablation.markdown_table(rows).splitlines()[2] == "| x | 4 | 1 | 7.00 | 9.13 |"


def test_collect_prefers_search_json(tmp_path):
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"search/mAP": 1.0, "search/top1": 2.0}) + "\n")
    assert ablation.collect_metrics(str(run))["mAP"] == 1.0
    (run / "inference" / "search_synth_prw_gallery.json").write_text(
        json.dumps({"dataset": "synth_prw_gallery", "metrics": {"search": {"mAP": 33.5, "top1": 70.0}}, "queries": []}))
    got = ablation.collect_metrics(str(run))
    assert (got["mAP"], got["top1"]) == (33.5, 70.0) and got["source"].endswith("search_synth_prw_gallery.json")
    with pytest.raises(ValueError, match="no inference/search"):
        ablation.collect_metrics(str(tmp_path))


def test_shipped_spec_covers_the_paper_tables(tmp_path):
    spec = ablation.load_spec(os.path.join(ROOT, "tools", "ablation_spec.yaml"))
    names = [v["name"] for v in spec["variants"]]
    for required in ("equal", "manual", "ulwf", "rulwf", "ulwf_grouped_g4", "galw_g2", "galw_g3", "galw_g4",
                     "galw_g5", "galw_g6", "branch_grouping", "semantic_grouping_2", "semantic_grouping_3",
                     "random_grouping_a", "random_grouping_b", "galw_single_run"):
        assert required in names
    runs = ablation.plan_runs(spec, str(tmp_path))
    seeds = {n: sorted(r["seed"] for r in runs if r["name"] == n) for n in names}
    # five seeds for the comparisons the conclusions rest on, three for the others
    assert {n for n, s in seeds.items() if s == [1, 2, 3, 4, 5]} == {"equal", "tuned_static", "galw_g4"}
    assert all(s == [1, 2, 3] for n, s in seeds.items() if n not in ("equal", "tuned_static", "galw_g4"))
    assert all("{seed}" not in o for r in runs for o in r["opts"])
    assert [r["opts"][-1] for r in runs if r["name"] == "tuned_static"] == [ablation.TUNED_WEIGHTS] * 5
    assert [d["seed"] for d in spec["datasets"]] == [0, 1, 0] and len(spec["search"]["candidates"]) >= 8
    long = ablation.load_spec(ablation.SHIPPED_SPEC)
    ablation.label_dataset(long, "data0_long")
    assert long["datasets"][2]["variants"] == ["equal", "tuned_static", "galw_g4"]
    long_runs = ablation.plan_runs(long, "out", only=long["datasets"][2]["variants"])
    assert [(r["name"], r["seed"]) for r in long_runs] == [
        (n, s) for s in (1, 2, 3) for n in ("equal", "tuned_static", "galw_g4")]
    assert run_opts(long, long_runs[0])[:12] == [
        "SOLVER.MAX_ITER", "2000", "SOLVER.STEPS", "(1200,)", "SOLVER.CHECKPOINT_PERIOD", "500", "TEST.EVAL_PERIOD",
        "400", "SOLVER.MAX_ITER", "6000", "SOLVER.STEPS", "(3600,)"]
    assert {r["groups_from"]["num_groups"] for r in runs if r["groups_from"]} == {2, 3, 4, 5, 6}


def test_spec_validation_names_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base_config: x.yaml\nseeds: [1]\nvariants:\n  - {name: a, opts: [K]}\n")
    with pytest.raises(ValueError, match="bad.yaml.*odd number"):
        ablation.load_spec(str(path))
    path.write_text("base_config: x.yaml\nseeds: [1]\nvariants:\n  - {name: a, opts: []}\n  - {name: a, opts: []}\n")
    with pytest.raises(ValueError, match="duplicate"):
        ablation.load_spec(str(path))
    path.write_text("base_config: x.yaml\nseeds: [1]\nvariants:\n  - {name: a, opts: [], groups_from: "
                    "{variant: b, groups_file: g.json, num_groups: 2}}\n  - {name: b, opts: []}\n")
    with pytest.raises(ValueError, match="listed before"):
        ablation.load_spec(str(path))
    path.write_text("base_config: missing.yaml\nseeds: [1]\nvariants:\n  - {name: a, opts: []}\n")
    with pytest.raises(FileNotFoundError, match="base_config"):
        ablation.run_ablation(ablation.load_spec(str(path)), str(tmp_path / "o"), runner=FakeTrainer())


def test_subprocess_runner_logs_and_returns_exit_code(tmp_path):
    import sys

    out = str(tmp_path / "run")
    assert ablation.subprocess_runner([sys.executable, "-c", "print('trained')"], out) == 0
    assert ablation.subprocess_runner([sys.executable, "-c", "import sys; sys.exit(3)"], out) == 3
    with open(os.path.join(out, "ablation_log.txt")) as f:
        assert f.read().strip() == "trained"
    show = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    assert ablation.subprocess_runner([sys.executable, "-c", show], str(tmp_path / "t"), threads=3) == 0
    with open(os.path.join(tmp_path, "t", "ablation_log.txt")) as f:
        assert f.read().strip() == "3 3"


def test_jobs_run_independent_runs_side_by_side_in_dependency_order(tmp_path):
    """--jobs 2: equal and galw_g4 of one seed are in flight together (a barrier only two concurrent
    runs can pass), galw_g2 trains after the galw_g4 whose phase one it regroups, results in plan order."""
    import threading

    spec = _write_spec(tmp_path, seeds=(1, 2))
    out = str(tmp_path / "out")
    barrier, trainer = threading.Barrier(2, timeout=10), FakeTrainer()

    def runner(cmd, out_dir):
        seed = int(cmd[cmd.index("SEED") + 1])
        if seed == 1 and os.path.basename(os.path.dirname(out_dir)) in ("equal", "galw_g4"):
            barrier.wait()  # raises BrokenBarrierError if the other one is not running meanwhile
        return trainer(cmd, out_dir)

    outcome = ablation.run_ablation(spec, out, runner=runner, group_tasks=fake_group_tasks, jobs=2)
    assert outcome["failed"] == []
    assert [(r["name"], r["seed"]) for r in outcome["results"]] == [
        ("equal", 1), ("galw_g4", 1), ("galw_g2", 1), ("equal", 2), ("galw_g4", 2), ("galw_g2", 2)]
    for seed in (1, 2):
        order = [n for n, s, _ in trainer.calls if s == seed and n != "equal"]
        assert order == ["galw_g4", "galw_g2"]
    sequential = ablation.run_ablation(spec, str(tmp_path / "seq"), runner=FakeTrainer(),
                                       group_tasks=fake_group_tasks)
    assert [(r["name"], r["seed"], r["mAP"]) for r in sequential["results"]] == [
        (r["name"], r["seed"], r["mAP"]) for r in outcome["results"]]
    with pytest.raises(ValueError, match="jobs"):
        ablation.run_ablation(spec, out, runner=trainer, jobs=0)


def test_table_has_top10_and_detection_ap_when_every_run_has_them(tmp_path):
    results = []
    for seed, (m_ap, top10, det) in enumerate([(10.0, 40.0, 20.0), (14.0, 50.0, 30.0)], 1):
        run = tmp_path / f"seed{seed}"
        (run / "inference").mkdir(parents=True)
        (run / "inference" / "search_g.json").write_text(json.dumps({"metrics": {
            "search": {"mAP": m_ap, "top1": 5.0, "top10": top10}, "detection": {"AP": det, "recall": 90.0}}}))
        results.append(dict(ablation.collect_metrics(str(run)), name="equal", seed=seed))
    assert (results[0]["top10"], results[0]["det_AP"]) == (40.0, 20.0)
    spec = _write_spec(tmp_path)
    rows = ablation.aggregate(spec, results)
    assert rows[0]["det_AP"] == [20.0, 30.0] and rows[0]["top10_mean"] == 45.0
    lines = ablation.markdown_table(rows).splitlines()
    assert lines[0] == "| variant | paper tables | runs | mAP (%) | top-1 (%) | top-10 (%) | detection AP (%) |"
    assert lines[2] == "| equal | 2, 3 | 2 | 12.00 ± 2.83 | 5.00 ± 0.00 | 45.00 ± 7.07 | 25.00 ± 7.07 |"


def test_dry_run_prints_commands(tmp_path, capsys):
    spec = _write_spec(tmp_path, seeds=(1,))
    cli.main(["--spec", spec["_path"], "--out", str(tmp_path / "o"), "--dry-run", "--only", "equal"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].endswith("SEED 1 SOLVER.MAX_ITER 5 MODEL.GALW.ENABLED False")
    assert not os.path.exists(tmp_path / "o")


def test_table_only_tabulates_finished_runs_and_lists_the_rest(tmp_path):
    spec = _write_spec(tmp_path)
    out = tmp_path / "out"
    trainer = FakeTrainer()
    ablation.run_ablation(spec, str(out), runner=trainer, only=["equal"], group_tasks=fake_group_tasks)
    outcome = ablation.finished_runs(spec, str(out))
    assert [(r["name"], r["seed"]) for r in outcome["results"]] == [("equal", 1), ("equal", 2), ("equal", 3)]
    assert {(r["name"], r["seed"]) for r in outcome["not_run"]} == {(n, s) for n in ("galw_g4", "galw_g2")
                                                                     for s in (1, 2, 3)}
    rows = ablation.write_tables(spec, outcome, str(out))
    assert rows[0]["mAP_mean"] == pytest.approx(52.0)
    text = (out / "ablation.md").read_text()
    assert "Not run (yet): 6: galw_g4 seeds 1, 2, 3; galw_g2 seeds 1, 2, 3." in text
    assert len(trainer.calls) == 3  # tabulating trains nothing


def test_a_run_kept_in_the_results_folder_is_not_trained_again_in_a_new_checkout(tmp_path):
    """The study goes on in another checkout: the run folders of earlier invocations are gone, the kept
    copies (committed) remain; those runs are reused, not trained again, and their copies stay as they were."""
    spec = _write_spec(tmp_path, seeds=(1, 2))
    results = str(tmp_path / "results")
    ablation.run_ablation(spec, str(tmp_path / "out"), runner=FakeTrainer(), only=["equal", "galw_g4"],
                          group_tasks=fake_group_tasks, results_dir=results)
    kept = {}
    for name in ("equal", "galw_g4"):
        for seed in (1, 2):
            path = os.path.join(results, name, f"seed{seed}.json")
            with open(path, "rb") as f:
                kept[path] = (f.read(), os.stat(path).st_mtime_ns)
    shutil.rmtree(tmp_path / "out")
    again = FakeTrainer(fail=set(FAKE))
    outcome = ablation.run_ablation(spec, str(tmp_path / "out"), runner=again, only=["equal", "galw_g4"],
                                    group_tasks=fake_group_tasks, results_dir=results)
    assert again.calls == [] and outcome["failed"] == []
    assert sorted((r["name"], r["seed"], r["mAP"]) for r in outcome["results"]) == [
        ("equal", 1, 50.0), ("equal", 2, 52.0), ("galw_g4", 1, 60.0), ("galw_g4", 2, 61.0)]
    for path, before in kept.items():
        with open(path, "rb") as f:
            assert (f.read(), os.stat(path).st_mtime_ns) == before, path


def _galw_g4_kept_elsewhere(tmp_path):
    """galw_g4 seed 1 trained, its result kept in RESULTS, its run folder gone: (spec, OUT, RESULTS)."""
    spec = _write_spec(tmp_path, seeds=(1,))
    out, results = str(tmp_path / "out"), str(tmp_path / "results")
    ablation.run_ablation(spec, out, runner=FakeTrainer(), only=["galw_g4"], group_tasks=fake_group_tasks,
                          results_dir=results)
    shutil.rmtree(out)
    return spec, out, results


def test_a_regrouped_run_gets_its_sources_phase_one_again_where_only_the_kept_result_remains(tmp_path):
    """galw_g2 regroups galw_g4's phase one; galw_g4 finished in another checkout (kept copy only): its first
    training runs again alone, in its folder, and must find the groups its result records."""
    spec, out, results = _galw_g4_kept_elsewhere(tmp_path)
    again = FakeTrainer()
    outcome = ablation.run_ablation(spec, out, runner=again, only=["galw_g4", "galw_g2"],
                                    group_tasks=fake_group_tasks, results_dir=results)
    assert outcome["failed"] == [] and [(n, s, "--galw-phase-one-only" in c) for n, s, c in again.calls] == [
        ("galw_g4", 1, True), ("galw_g2", 1, False)]
    g2_cmd = again.calls[1][2]
    assert g2_cmd[-2:] == ["MODEL.WEIGHTS", os.path.join(out, "galw_g4", "seed1", "phase1", "init.pth")]
    with open(os.path.join(out, "galw_g2", "seed1", "galw_groups_input.json")) as f:
        assert json.load(f)["groups"] == [["loss_a", "loss_c"], ["loss_b"]]
    with open(os.path.join(out, "galw_g4", "seed1", "ablation_planned.json")) as f:
        assert json.load(f)["opts"] == run_opts(spec, {"opts": ["MODEL.GALW.NUM_GROUPS", "4", "MODEL.GALW.RANDOM_SEED",
                                                                 "1"]})
    # a phase one that finds other groups than the kept result records: no regrouped run trains
    shutil.rmtree(tmp_path / "out")
    os.remove(os.path.join(results, "galw_g2", "seed1.json"))
    other = FakeTrainer(phase_one_groups=(("loss_a", "loss_b"), ("loss_c",)))
    outcome = ablation.run_ablation(spec, out, runner=other, only=["galw_g4", "galw_g2"],
                                    group_tasks=fake_group_tasks, results_dir=results)
    assert [(n, s) for n, s, _ in other.calls] == [("galw_g4", 1)]
    (failure,) = outcome["failed"]
    assert failure["name"] == "galw_g2" and "found the groups [['loss_a', 'loss_b'], ['loss_c']], while the result " \
        "of galw_g4 seed 1 records [['loss_a'], ['loss_b'], ['loss_c']]" in failure["reason"]
    # the mismatched phase one stays refused: the next invocation trains nothing from it either
    later = FakeTrainer()
    outcome = ablation.run_ablation(spec, out, runner=later, only=["galw_g4", "galw_g2"],
                                    group_tasks=fake_group_tasks, results_dir=results)
    assert later.calls == [] and [f["name"] for f in outcome["failed"]] == ["galw_g2"]
    assert "remove " + os.path.join(out, "galw_g4", "seed1", "phase1") + " to run it again" in outcome["failed"][0]["reason"]


class InterruptedPhaseOne(FakeTrainer):
    """The first phase-one-only training is killed after a checkpoint; the later ones finish."""

    def __call__(self, cmd, out_dir):
        if "--galw-phase-one-only" in cmd and not any("--galw-phase-one-only" in c for _, _, c in self.calls):
            self.calls.append(("galw_g4", 1, cmd))
            os.makedirs(os.path.join(out_dir, "galw_phase1"), exist_ok=True)
            with open(os.path.join(out_dir, "galw_phase1", "last_checkpoint"), "w") as f:
                f.write("model_0000009.pth")
            return -9
        return super().__call__(cmd, out_dir)


def test_an_interrupted_phase_one_restore_resumes_and_a_bad_groups_file_is_a_failure(tmp_path):
    spec, out, results = _galw_g4_kept_elsewhere(tmp_path)
    trainer = InterruptedPhaseOne()
    first = ablation.run_ablation(spec, out, runner=trainer, only=["galw_g4", "galw_g2"],
                                  group_tasks=fake_group_tasks, results_dir=results)
    assert [f["name"] for f in first["failed"]] == ["galw_g2"] and "exited with code -9" in first["failed"][0]["reason"]
    second = ablation.run_ablation(spec, out, runner=trainer, only=["galw_g4", "galw_g2"],
                                   group_tasks=fake_group_tasks, results_dir=results)
    restores = [c for _, _, c in trainer.calls if "--galw-phase-one-only" in c]
    assert second["failed"] == [] and len(restores) == 2
    assert "--resume" not in restores[0] and "--resume" in restores[1]
    # a phase-one file that is not a groups object fails the regrouped run, naming the file
    shutil.rmtree(os.path.join(out, "galw_g2"))
    os.remove(os.path.join(results, "galw_g2", "seed1.json"))
    groups_file = os.path.join(out, "galw_g4", "seed1", "phase1", "galw_groups.json")
    with open(groups_file, "w") as f:
        json.dump([["loss_a"]], f)
    outcome = ablation.run_ablation(spec, out, runner=FakeTrainer(), only=["galw_g4", "galw_g2"],
                                    group_tasks=fake_group_tasks, results_dir=results)
    assert [f["reason"] for f in outcome["failed"]] == [
        f"{groups_file}: expected a JSON object with a list 'groups', got [['loss_a']]"]


def test_a_kept_copy_of_other_opts_names_the_copy_to_remove(tmp_path, caplog):
    spec = _write_spec(tmp_path, seeds=(1,))
    results, out = str(tmp_path / "results"), str(tmp_path / "out")
    ablation.run_ablation(spec, out, runner=FakeTrainer(), only=["equal"], results_dir=results)
    os.remove(os.path.join(out, "equal", "seed1", ablation.RESULT_FILE))
    with open(os.path.join(out, "equal", "seed1", "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    with caplog.at_level("WARNING", logger="galw.ablation.runner"):
        ablation.run_ablation(spec, out, runner=FakeTrainer(fail=set(FAKE)), only=["equal"], results_dir=results)
    assert "holds the checkpoints of an unfinished training, not used: the kept copy " + os.path.join(
        results, "equal", "seed1.json") in caplog.text
    spec["common_opts"] = ["SOLVER.MAX_ITER", 6]
    with pytest.raises(ValueError, match=re.escape(os.path.join(results, "equal", "seed1.json")) + r": was trained "
                       r"with other opts than planned .*Remove that kept copy and the run's folder to train it again"):
        ablation.run_ablation(spec, out, runner=FakeTrainer(), only=["equal"], results_dir=results)


class CheckpointingTrainer(FakeTrainer):
    """FakeTrainer that also leaves detectron2's checkpoints: periodic ones and, unless ``unfinished``,
    model_final.pth (last_checkpoint names the last one saved)."""

    def __init__(self, unfinished=(), **kwargs):
        super().__init__(**kwargs)
        self.unfinished = set(unfinished)

    def __call__(self, cmd, out_dir):
        code = super().__call__(cmd, out_dir)
        import torch

        from galw.checkpoint import AtomicCheckpointer

        name = (os.path.basename(os.path.dirname(out_dir)), self.calls[-1][1])
        ckpt = AtomicCheckpointer(torch.nn.Linear(4, 2), out_dir)
        for it in ["model_0000001", "model_0000003"] + ([] if name in self.unfinished else ["model_final"]):
            ckpt.save(it)
        return code


def _checkpoints(out_dir):
    return sorted(n for n in os.listdir(out_dir) if n.endswith(".pth"))


def test_a_finished_run_keeps_its_final_checkpoint_and_phase_one_not_its_periodic_ones(tmp_path):
    spec = _write_spec(tmp_path, seeds=(1,))
    out = str(tmp_path / "out")
    outcome = ablation.run_ablation(spec, out, runner=CheckpointingTrainer(), group_tasks=fake_group_tasks)
    assert outcome["failed"] == [] and len(outcome["results"]) == 3
    for name in ("equal", "galw_g4", "galw_g2"):
        assert _checkpoints(os.path.join(out, name, "seed1")) == ["model_final.pth"], name
    # galw_g2 trained from galw_g4's phase-one initial weights, which stay
    assert os.path.isfile(os.path.join(out, "galw_g4", "seed1", "phase1", "init.pth"))
    # a run reused from its result file loses the periodic checkpoints left in its folder
    run_dir = os.path.join(out, "equal", "seed1")
    for ckpt in ("model_0000001.pth", "model_0000001.pth.sha256"):
        shutil.copy(os.path.join(run_dir, "model_final.pth" + ckpt[len("model_0000001.pth"):]),
                    os.path.join(run_dir, ckpt))
    again = FakeTrainer(fail=set(FAKE))
    ablation.run_ablation(spec, out, runner=again, only=["equal"], group_tasks=fake_group_tasks)
    assert again.calls == [] and _checkpoints(run_dir) == ["model_final.pth"]


def test_a_run_whose_training_did_not_finish_keeps_its_checkpoints(tmp_path, caplog):
    spec = _write_spec(tmp_path, seeds=(1,))
    out = str(tmp_path / "out")
    trainer = CheckpointingTrainer(unfinished={("equal", 1)})
    ablation.run_ablation(spec, out, runner=trainer, only=["equal"], group_tasks=fake_group_tasks)
    run_dir = os.path.join(out, "equal", "seed1")
    assert _checkpoints(run_dir) == ["model_0000001.pth", "model_0000003.pth"]
    assert (f"equal seed 1: its periodic checkpoints are kept: {run_dir}: expected a finished training "
            "(last_checkpoint naming model_final.pth), found 'model_0000003.pth'") in caplog.text


def test_a_result_names_the_commit_its_run_started_at(tmp_path, monkeypatch):
    """A commit made while a run trains is not the code it trained with."""
    import galw.ablation.runner

    head = {"commit": "a1b2c3"}
    monkeypatch.setattr(galw.ablation.runner, "git_commit", lambda: head["commit"])

    class CommitLandsMeanwhile(FakeTrainer):
        def __call__(self, cmd, out_dir):
            head["commit"] = "d4e5f6"
            return super().__call__(cmd, out_dir)

    spec = _write_spec(tmp_path, seeds=(1,))
    out = str(tmp_path / "out")
    ablation.run_ablation(spec, out, runner=CommitLandsMeanwhile(), only=["equal"], group_tasks=fake_group_tasks)
    assert read_result(os.path.join(out, "equal", "seed1", ablation.RESULT_FILE))["meta"]["commit"] == "a1b2c3"


def test_dependency_chains_follow_groups_from_to_its_first_source(tmp_path):
    """A run regrouping a run that itself regroups another shares the first source's chain."""
    spec = _write_spec(tmp_path, seeds=(1, 2))
    runs = ablation.plan_runs(spec, str(tmp_path / "out"))
    g2 = next(r for r in runs if r["name"] == "galw_g2")
    g1 = dict(g2, name="galw_g1", groups_from=dict(g2["groups_from"], variant="galw_g2"))
    chain_of = dependency_chains(runs + [g1])
    assert [chain_of(r) for r in runs] == [("equal", 1), ("galw_g4", 1), ("galw_g4", 1),
                                           ("equal", 2), ("galw_g4", 2), ("galw_g4", 2)]
    assert chain_of(g1) == ("galw_g4", 1)


def test_jobs_start_the_chains_with_most_runs_left_first(tmp_path):
    """--jobs 1 trains the chains longest first: seed 2's galw_g4 and galw_g2 (two runs left) before
    seed 1's equal (one run left; the other chains are done), whatever the plan order."""
    spec = _write_spec(tmp_path, seeds=(1, 2))
    out = str(tmp_path / "out")
    ablation.run_ablation(spec, out, runner=FakeTrainer(), group_tasks=fake_group_tasks, only=["galw_g2"], seeds=[1])
    trainer = FakeTrainer()
    outcome = ablation.run_ablation(spec, out, runner=trainer, group_tasks=fake_group_tasks)
    assert [(n, s) for n, s, _ in trainer.calls] == [("galw_g4", 2), ("galw_g2", 2), ("equal", 1), ("equal", 2)]
    assert [(r["name"], r["seed"]) for r in outcome["results"]] == [
        ("equal", 1), ("galw_g4", 1), ("galw_g2", 1), ("equal", 2), ("galw_g4", 2), ("galw_g2", 2)]


def test_a_result_records_the_threads_its_run_trained_with(tmp_path):
    """The result file's meta describes the runner process; the run's own OpenMP threads (subprocess_runner's
    ``threads``, which tools/ablation.py --jobs sets) go beside its seconds, else the ones it inherits."""
    from functools import partial

    import torch

    trainer = FakeTrainer()

    def train(cmd, out_dir, threads=None):
        return trainer(cmd, out_dir)

    spec = _write_spec(tmp_path, seeds=(1,))
    for out, runner, threads in (("set", partial(train, threads=3), 3), ("inherited", trainer, torch.get_num_threads())):
        ablation.run_ablation(spec, str(tmp_path / out), runner=runner, only=["equal"], group_tasks=fake_group_tasks)
        assert read_result(str(tmp_path / out / "equal" / "seed1" / ablation.RESULT_FILE))["data"]["threads"] == threads
