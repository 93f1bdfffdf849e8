"""benchmarks/demo_seeds.py: the seed table (min / median / max next to the gauge) and the skip of
runs already done."""
import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import demo_seeds  # noqa: E402
from galw.results import git_commit  # noqa: E402


def _run(seed, mAP, top1, gauge=(44.49, 95.0)):
    return {"run": {"seed": seed}, "wall_time_s": 100.0 + seed, "commit": f"c{seed}", "trained": {"mAP": mAP, "top1": top1},
            "gauge": {"mAP": gauge[0], "top1": gauge[1]}}


def test_seed_table_puts_min_median_max_beside_the_gauge():
    table = demo_seeds.seed_table([_run(0, 50.0, 85.0), _run(1, 41.234, 80.0), _run(2, 60.0, 90.0)])
    assert [r["seed"] for r in table["rows"]] == [0, 1, 2]
    assert table["rows"][1] == {"seed": 1, "mAP": 41.23, "top-1": 80.0, "gauge mAP": 44.49, "gauge top-1": 95.0,
                                "wall time (s)": 101.0, "commit": "c1"}
    assert table["summary"] == [
        {"metric": "mAP", "min": 41.23, "median": 50.0, "max": 60.0, "gauge": 44.49, "median - gauge": 5.51},
        {"metric": "top-1", "min": 80.0, "median": 85.0, "max": 90.0, "gauge": 95.0, "median - gauge": -10.0},
    ]


def test_a_finished_run_is_kept_and_another_recipe_is_not(tmp_path, monkeypatch):
    config = os.path.join(ROOT, "projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_galw.yaml")
    done = {"run": {"size": "tiny", "data_seed": 0, "seed": 1, "config_file": os.path.relpath(config),
                    "opts": ["SOLVER.MAX_ITER", "5"]}, "wall_time_s": 1.0,
            "trained": {"mAP": 1.0, "top1": 2.0}, "gauge": {"mAP": 3.0, "top1": 4.0}}
    (tmp_path / "data0_seed1.json").write_text(json.dumps(done))
    calls = []
    monkeypatch.setattr(demo_seeds, "run_demo", lambda **kw: calls.append(kw) or {
        "wall_time_s": 2.0, "results": {"ROI-AlignPS* + GALW (trained)": {"mAP": 9.0, "top1": 8.0},
                                        "colour histograms on GT boxes (no learning)": {"mAP": 3.0, "top1": 4.0}}})
    assert demo_seeds.run_seed(str(tmp_path), "tiny", 0, 1, config, ["SOLVER.MAX_ITER", "5"]) == done
    assert calls == []
    again = demo_seeds.run_seed(str(tmp_path), "tiny", 0, 1, config, ["SOLVER.MAX_ITER", "6"])
    assert len(calls) == 1 and calls[0]["opts"] == ["SEED", "1", "SOLVER.MAX_ITER", "6"]
    assert again["trained"] == {"mAP": 9.0, "top1": 8.0} and again["run"]["opts"] == ["SOLVER.MAX_ITER", "6"]
    assert again["commit"] == git_commit()
    assert json.loads((tmp_path / "data0_seed1.json").read_text()) == again


def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """A commit made while a run trains is not the code it trained with."""
    config = os.path.join(ROOT, "projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_galw.yaml")
    head = {"commit": "a1b2c3"}
    monkeypatch.setattr(demo_seeds, "git_commit", lambda: head["commit"])

    def train_while_a_commit_lands(**kw):
        head["commit"] = "d4e5f6"
        return {"wall_time_s": 2.0, "results": {demo_seeds.ROW_TRAINED: {"mAP": 9.0, "top1": 8.0},
                                                demo_seeds.ROW_BASELINE: {"mAP": 3.0, "top1": 4.0}}}

    monkeypatch.setattr(demo_seeds, "run_demo", train_while_a_commit_lands)
    done = demo_seeds.run_seed(str(tmp_path), "tiny", 0, 1, config, [])
    assert done["commit"] == "a1b2c3"
