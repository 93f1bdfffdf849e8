"""galw.ablation.conclusion: the study's answer and the paper's claims across its datasets, rendered
from the kept result files (the docs' ``ablation`` block)."""
import glob
import json
import os
import shutil

from test_ablation_study import Trainer, _arg, _spec

from galw import ablation
from galw.results_docs import render_block

DATASETS = [{"name": "d0", "seed": 0, "size": "tiny"},
            {"name": "d7", "seed": 7, "size": "tiny", "variants": ["equal", "galw_g4"], "search_from": "d0"}]
VARIANTS = [
    {"name": "equal", "seeds": [1, 2, 3], "opts": ["MODEL.GALW.ENABLED", False], "paper": {"mAP": 48.68, "top1": 84.15}},
    {"name": "tuned_static", "seeds": [1, 2, 3],
     "opts": ["MODEL.GALW.WEIGHTING", "manual", "MODEL.GALW.MANUAL_WEIGHTS", "{tuned_weights}"]},
    {"name": "galw_g4", "seeds": [1, 2, 3], "opts": ["MODEL.GALW.NUM_GROUPS", 4], "paper": {"mAP": 52.89, "top1": 86.07}},
    {"name": "manual", "seeds": [1, 2, 3], "opts": ["MODEL.GALW.WEIGHTING", "manual"],
     "paper": {"mAP": 50.30, "top1": 84.30}}]
CLAIMS = [{"table": "1", "variant": "galw_g4", "reference": "equal"},
          {"table": "1", "variant": "manual", "reference": "equal"},
          {"table": "3", "variant": "galw_g4", "reference": "manual"}]


class SpreadTrainer(Trainer):
    """galw_g4 reaches equal's mAP + 2 + seed / 10 (paired differences with a spread to test); manual
    reaches equal's - 1 - seed / 20 (against the paper)."""

    def __call__(self, cmd, out_dir):
        name, seed = os.path.basename(os.path.dirname(out_dir)), int(_arg(cmd, "SEED"))
        self.bonus = {"galw_g4": 2 + seed / 10, "manual": -1 - seed / 20}.get(name, 0.0)
        return super().__call__(cmd, out_dir)


def _study(tmp_path, d7_seeds):
    spec = _spec(tmp_path, datasets=DATASETS, variants=VARIANTS, claims=CLAIMS)
    out, res = tmp_path / "out", tmp_path / "results"
    ablation.run_ablation(spec, str(out / "d0"), runner=SpreadTrainer(), results_dir=str(res / "d0"))
    d7 = ablation.load_spec(spec["_path"])
    data = ablation.label_dataset(d7, "d7")
    if d7_seeds != []:
        ablation.run_ablation(d7, str(out / "d7"), runner=SpreadTrainer(), only=data["variants"], seeds=d7_seeds,
                              results_dir=str(res / "d7"), search=ablation.borrowed_search(d7, data, str(out), str(res)))
    shutil.rmtree(out)  # the conclusion reads the kept files alone
    return spec, str(res)


def _set_seconds(folder, seconds):
    """Give every kept result file under ``folder`` the wall time ``seconds``."""
    for path in glob.glob(os.path.join(folder, "**", "seed*.json"), recursive=True):
        with open(path) as f:
            doc = json.load(f)
        doc["data"]["seconds"] = seconds
        with open(path, "w") as f:
            json.dump(doc, f)


def test_the_conclusion_sets_every_dataset_side_by_side(tmp_path):
    spec, res = _study(tmp_path, d7_seeds=[1])
    _set_seconds(os.path.join(res, "d0"), 600.0)
    _set_seconds(os.path.join(res, "d7"), 1200.0)
    md = ablation.conclusion_markdown(res, spec["_path"])
    # 18 files of 10 min and 2 of 20 min; d7's 4 runs left at its 20 min
    assert "| wall time per run (mean of its kept files) | 10.0 min (18 files) | 20.0 min (2 files) |" in md
    assert ("Cost: the kept files took 3.7 h of training and evaluation (the sum of their runs' wall times); the 4 "
            "planned runs left need about 1.3 h more at their dataset's mean per run.\n") in md
    # d0: 6 search runs and 12 variant runs; d7: 6 planned, seed 1 of equal and galw_g4 kept
    assert md.startswith("**Provisional**: 20 of 24 planned result files exist; the conclusion holds once every one does.")
    assert "| | `d0` | `d7` |" in md
    assert ("| `galw_g4` vs `tuned_static` | -0.80 [-1.05, -0.55], 3 seeds: lower, significant | not trained here |"
            in md)
    assert "| `galw_g4` vs `equal` | +2.20 [+1.95, +2.45], 3 seeds: higher, significant | +2.10 (1 seed) |" in md
    assert ("| `tuned_static` vs `equal` | +3.00, 3 seeds: n/a (every paired seed differs by the same amount: no "
            "spread to test) | not trained here |") in md
    assert "| equal yes, tuned_static yes, galw_g4 yes | equal yes, galw_g4 yes |" in md
    assert "| 1 | galw_g4 | equal | +4.21 | +2.20: reproduced | +2.10: n/a (fewer than 2 paired seeds) | holds |" in md
    assert "| 1 | manual | equal | +1.62 | -1.10: opposite, significant | not trained here | against |" in md
    assert "| 3 | galw_g4 | manual | +2.59 | +3.30: reproduced | not trained here | holds |" in md
    assert "* Reproduced (the paper's direction, significant, on every dataset that measures it): 2: " in md
    assert "* Inconclusive (the opposite sign or no difference on at least one dataset, significant on none): 0." in md
    assert "* Against the paper (the opposite sign, significant, on at least one dataset): 1: Table 1 `manual` vs `equal`." in md
    assert "* Not measured yet (no dataset has 2 paired seeds with a spread): 0." in md


def test_a_claim_holds_only_where_every_dataset_that_measures_it_agrees(tmp_path):
    spec, res = _study(tmp_path, d7_seeds=None)
    _set_seconds(res, 900.0)
    md = ablation.conclusion_markdown(res, spec["_path"])
    assert md.startswith("Every planned run has its result file (24).")
    # 24 files of 15 min, and nothing left to estimate
    assert "\nCost: the kept files took 6.0 h of training and evaluation (the sum of their runs' wall times).\n" in md
    assert "runs left" not in md
    assert "| `galw_g4` vs `equal` | +2.20 [+1.95, +2.45], 3 seeds: higher, significant | +2.20 [+1.95, +2.45], 3 seeds" in md
    summary = {(c["variant"], c["reference"]): c for c in ablation.claim_summary(ablation.dataset_reports(res, spec["_path"]))}
    assert summary[("galw_g4", "equal")]["verdicts"] == {"d0": "reproduced", "d7": "reproduced"}
    assert summary[("galw_g4", "equal")]["status"] == "holds"
    assert summary[("manual", "equal")]["verdicts"] == {"d0": "opposite, significant"}
    assert summary[("galw_g4", "manual")]["status"] == "holds"


def test_a_dataset_without_files_yet_has_no_paired_seeds(tmp_path):
    spec, res = _study(tmp_path, d7_seeds=[])
    md = ablation.conclusion_markdown(res, spec["_path"])
    assert md.startswith("**Provisional**: 18 of 24 planned result files exist")
    assert "| `galw_g4` vs `equal` | +2.20 [+1.95, +2.45], 3 seeds: higher, significant | no paired seeds yet |" in md
    assert "| 1 | galw_g4 | equal | +4.21 | +2.20: reproduced | no paired seeds yet | holds |" in md
    assert "| equal yes, tuned_static yes, galw_g4 yes | no runs yet |" in md
    assert "| wall time per run (mean of its kept files) | " in md and " | no runs yet |\n" in md
    assert "need about 0.0 h more at their dataset's mean per run (and those of `d7`, without a run to measure yet)." in md


def test_a_claims_status_weighs_the_verdict_of_every_dataset():
    def status(*verdicts):
        reports = [{"name": f"d{i}", "claims": [{"table": "1", "variant": "a", "reference": "b", "paper_diff": 1.0,
                                                  "measured": {}, "verdict": v}]} for i, v in enumerate(verdicts)]
        return ablation.claim_summary(reports)[0]["status"]

    assert status("reproduced", "reproduced") == "holds"
    assert status("reproduced", "n/a (fewer than 2 paired seeds)") == "holds"
    assert status("reproduced", "same direction, not significant") == "same direction"
    assert status("reproduced", "opposite, not significant") == "inconclusive"
    assert status("same direction, not significant", "no difference") == "inconclusive"
    assert status("opposite, not significant", "opposite, significant") == "against"
    assert status("n/a (every paired seed differs by the same amount: no spread to test)", "n/a (no runs)") == "not measured"


def test_the_docs_block_of_the_whole_study(tmp_path):
    assert render_block("ablation", str(tmp_path)) == (
        "No result file yet: `python tools/ablation.py --out output/ablation` writes `results/ablation` and "
        "`make results` shows it here.\n")
    assert ablation.conclusion_markdown(str(tmp_path / "ablation")) is None
