"""galw.ablation's paired statistics, convergence figures, tables and plots on hand-made run results."""
import json
import math

import numpy as np
import pytest

from galw import ablation
from galw.ablation import plots
from galw.ablation.answer import answer_markdown, pair_verdict

SPEC = {"_path": "spec.yaml", "base_config": "base.yaml", "common_opts": [],
        "variants": [{"name": n, "tables": ["1"]} for n in ("equal", "tuned_static", "galw_g4", "close")]}


def _curve(points):
    return [{"iteration": it, "mAP": m, "top1": m + 30} for it, m in points]


def _results(values):
    """[{"name", "seed", "mAP", "top1", "curve"}] from {name: {seed: mAP}}; top-1 = mAP + 30."""
    return [{"name": n, "seed": s, "mAP": m, "top1": m + 30,
             "curve": _curve([(0, 0.0), (500, m - 5), (800, m - 0.5), (1000, m)])}
            for n, by_seed in values.items() for s, m in by_seed.items()]


VALUES = {"equal": {1: 50.0, 2: 52.0, 3: 54.0},
          "tuned_static": {1: 55.0, 2: 55.0, 3: 57.0, 4: 58.0, 5: 56.0},
          "galw_g4": {1: 60.0, 2: 61.0, 3: 65.0},
          "close": {2: 53.0, 3: 57.0, 4: 60.0}}


def test_paired_difference_on_hand_values():
    from scipy.stats import t as student_t

    rows = ablation.aggregate(SPEC, _results(VALUES))
    by = {r["name"]: r for r in rows}
    got = ablation.paired(by["galw_g4"], by["equal"], "mAP")
    # per-seed differences 10, 9, 11: mean 10, sample std 1, n 3, df 2
    assert got["n"] == 3 and got["seeds"] == [1, 2, 3] and got["diffs"] == [10.0, 9.0, 11.0]
    assert got["mean_diff"] == pytest.approx(10.0)
    half = student_t.ppf(0.975, 2) / math.sqrt(3)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(10 - half), pytest.approx(10 + half))
    assert got["p"] == pytest.approx(2 * student_t.sf(10 * math.sqrt(3), 2))
    # only the seeds both have: close has 2, 3, 4 and equal 1, 2, 3 -> seeds 2 and 3, diffs 1 and 3
    close = ablation.paired(by["close"], by["equal"], "mAP")
    assert close["seeds"] == [2, 3] and close["mean_diff"] == pytest.approx(2.0)
    assert close["ci_low"] == pytest.approx(2 - student_t.ppf(0.975, 1) * 1.0)  # std sqrt(2) / sqrt(2)
    assert close["p"] == pytest.approx(2 * student_t.sf(2.0, 1))
    # one shared seed: a difference, no interval
    one = ablation.paired({"seeds": [4], "mAP": [60.0]}, by["tuned_static"], "mAP")
    assert (one["n"], one["mean_diff"], one["ci_low"], one["p"]) == (1, 2.0, None, None)
    assert ablation.paired({"seeds": [9], "mAP": [1.0]}, by["equal"], "mAP") is None
    # the same difference on every seed: a point interval, not NaN
    same = ablation.paired({"seeds": [1, 2, 3], "mAP": [51.0, 53.0, 55.0]}, by["equal"], "mAP")
    assert (same["ci_low"], same["ci_high"], same["p"]) == (1.0, 1.0, None)
    equal = ablation.paired(by["equal"], by["equal"], "mAP")
    assert (equal["mean_diff"], equal["ci_low"], equal["ci_high"], equal["p"]) == (0.0, 0.0, 0.0, None)
    # the answer and the claims say the same of both
    assert pair_verdict(same) == "n/a (every paired seed differs by the same amount: no spread to test)"
    assert pair_verdict(equal) == "no difference"
    assert [ablation.claims._verdict(paper, d) for paper, d in ((2.0, same), (2.0, equal))] == [
        pair_verdict(same), pair_verdict(equal)]
    assert "| x | equal | 3 | +1.00 | [+1.00, +1.00] | n/a |" in ablation.comparison_table(
        [{"name": "x", "reference": "equal", "mAP": same}])


def test_paired_by_name_finds_both_rows_or_none():
    rows = ablation.aggregate(SPEC, _results(VALUES))
    got = ablation.paired_by_name(rows, "galw_g4", "equal")
    assert got["diffs"] == [10.0, 9.0, 11.0] and got["mean_diff"] == pytest.approx(10.0)
    assert ablation.paired_by_name(rows, "equal", "galw_g4")["mean_diff"] == pytest.approx(-10.0)
    assert ablation.paired_by_name(rows, "galw_g4", "not_trained") is None
    assert ablation.paired_by_name(rows, "not_trained", "equal") is None


def test_every_variant_against_equal_and_tuned_static_once():
    rows = ablation.aggregate(SPEC, _results(VALUES))
    pairs = [(c["name"], c["reference"]) for c in ablation.all_comparisons(rows)]
    assert pairs == [("tuned_static", "equal"), ("galw_g4", "equal"), ("close", "equal"),
                     ("galw_g4", "tuned_static"), ("close", "tuned_static")]
    g4 = next(c for c in ablation.all_comparisons(rows) if c["name"] == "galw_g4" and c["reference"] == "tuned_static")
    assert g4["mAP"]["diffs"] == [5.0, 6.0, 8.0] and g4["top1"]["mean_diff"] == pytest.approx(19 / 3)
    table = ablation.comparison_table([g4]).splitlines()
    assert table[0] == ("| variant | vs | n | Δ mAP | 95 % CI | p | n | Δ top-1 | 95 % CI | p |")
    assert table[2].startswith("| galw_g4 | tuned_static | 3 | +6.33 | [+2.54, +10.13] | ")


def test_convergence_of_one_curve_on_hand_values():
    # window from 0.8 x 1000 = 800: values 44 (at 800), 45, 44.5 -> range 1.0, drift +0.5
    c = ablation.run_convergence(_curve([(0, 0.0), (700, 40.0), (800, 44.0), (900, 45.0), (1000, 44.5)]))
    assert (c["start"], c["end"], c["evaluations"]) == (800.0, 1000.0, 2)
    assert (c["value_at_start"], c["range"], c["drift"]) == (44.0, 1.0, 0.5)
    # evaluations every 300 iterations from 299: the start 959.2 is interpolated between 899 and 1199
    c = ablation.run_convergence(_curve([(299, 10.0), (599, 20.0), (899, 30.0), (1199, 31.0)]))
    at = 30.0 + (959.2 - 899) / 300
    assert c["value_at_start"] == pytest.approx(at) and c["range"] == pytest.approx(31 - at)
    assert c["drift"] == pytest.approx(31 - at) and c["evaluations"] == 1
    # a window that falls: the range is max - min, the drift negative
    c = ablation.run_convergence(_curve([(0, 50.0), (800, 50.0), (900, 52.0), (1000, 48.5)]))
    assert (c["range"], c["drift"]) == (3.5, -1.5)
    # only the final evaluation: nothing to say
    c = ablation.run_convergence(_curve([(3000, 70.0)]))
    assert (c["range"], c["drift"], c["last"]) == (None, None, 70.0)
    assert ablation.run_convergence([])["range"] is None


def test_worst_seed_and_the_baseline_flag():
    results = [
        {"name": "equal", "seed": 1, "curve": _curve([(0, 0.0), (800, 50.0), (1000, 50.6)])},
        {"name": "equal", "seed": 2, "curve": _curve([(0, 0.0), (800, 50.0), (900, 50.9), (1000, 50.2)])},
        {"name": "galw_g4", "seed": 1, "curve": _curve([(0, 0.0), (800, 50.0), (1000, 53.0)])},
        {"name": "galw_g4", "seed": 2, "curve": _curve([(0, 0.0), (800, 50.0), (1000, 49.0)])},
        {"name": "tuned_static", "seed": 1, "curve": _curve([(1000, 50.0)])},
    ]
    conv = ablation.convergence(SPEC, results)
    by = {v["name"]: v for v in conv["variants"]}
    assert by["equal"]["worst_seed"] == 2 and by["equal"]["worst_range"] == pytest.approx(0.9)
    # the largest |drift| is seed 1's, not the worst seed's (seed 2 drifts 0.2)
    assert by["equal"]["max_abs_drift"] == pytest.approx(0.6) and by["equal"]["converged"] is True
    assert "worst_drift" not in by["equal"]
    assert conv["baseline_converged"] is True
    assert (by["galw_g4"]["worst_seed"], by["galw_g4"]["max_abs_drift"], by["galw_g4"]["converged"]) == (1, 3.0, False)
    # a falling seed counts by its magnitude
    falling = results[:3] + [{"name": "galw_g4", "seed": 2, "curve": _curve([(0, 0.0), (800, 50.0), (1000, 46.0)])}]
    by_falling = {v["name"]: v for v in ablation.convergence(SPEC, falling)["variants"]}
    assert (by_falling["galw_g4"]["worst_seed"], by_falling["galw_g4"]["max_abs_drift"]) == (2, 4.0)
    assert by["tuned_static"]["converged"] is None and by["tuned_static"]["worst_seed"] is None
    # one equal seed still moving by a point: the baseline has not converged
    results[1]["curve"] = _curve([(0, 0.0), (800, 50.0), (1000, 51.0)])
    assert ablation.convergence(SPEC, results)["baseline_converged"] is False
    table = ablation.convergence_table(ablation.convergence(SPEC, results)).splitlines()
    assert table[0].startswith("| variant | worst seed | mAP range in window | max abs drift (any seed) |")
    assert table[2] == "| equal | 2 | 1.00 | 1.00 | **no** |"
    assert table[3] == "| tuned_static | n/a | n/a | n/a | n/a (curve too short) |"


def test_curve_band_uses_iterations_every_seed_has():
    results = [{"name": "equal", "seed": 1, "curve": _curve([(100, 10.0), (200, 20.0), (300, 30.0)])},
               {"name": "equal", "seed": 2, "curve": _curve([(100, 14.0), (200, 22.0)])}]
    its, mean, std, n = plots.curve_band(results, "equal")
    assert its.tolist() == [100, 200] and mean.tolist() == [12.0, 21.0] and n == 2
    assert std.tolist() == pytest.approx([8 ** 0.5, 2 ** 0.5])
    assert plots.curve_band(results, "galw_g4") is None


def test_write_tables_writes_tables_json_and_figures(tmp_path):
    results = _results(VALUES)
    outcome = {"results": results, "failed": [], "not_run": [{"name": "galw_g4", "seed": 4}]}
    rows = ablation.write_tables(SPEC, outcome, str(tmp_path))
    assert [r["name"] for r in rows] == ["equal", "tuned_static", "galw_g4", "close"]
    md = (tmp_path / "ablation.md").read_text()
    assert "| tuned_static | 1 | 5 | 56.20 ± 1.30 | 86.20 ± 1.30 |" in md
    assert "| galw_g4 | equal | 3 | +10.00 | " in md
    # every curve moves 0.5 over its window (m - 0.5 at 800, m at 1000): all converged
    assert "Baseline `equal` converged on every seed: yes." in md
    assert "![mAP per variant, mean ± std over seeds](ablation_means.png)" in md
    for name in ("ablation_means.png", "ablation_curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["convergence"]["baseline_converged"] is True
    assert [v["worst_range"] for v in saved["convergence"]["variants"]] == [0.5] * 4
    assert saved["comparisons"][0]["mAP"]["diffs"] == [5.0, 3.0, 3.0]
    assert sorted(saved["figures"]) == ["ablation_curves.png", "ablation_means.png"]
    assert saved["not_run"] == [{"name": "galw_g4", "seed": 4}]


def test_learning_curves_need_one_of_the_variants(tmp_path):
    with pytest.raises(ValueError, match="none of"):
        plots.plot_learning_curves([{"name": "close", "seed": 1, "curve": _curve([(1, 1.0)])}],
                                   str(tmp_path / "c.png"))
    drawn = plots.plot_learning_curves(_results({"equal": {1: 50.0}, "close": {1: 1.0}}), str(tmp_path / "c.png"))
    assert drawn == ["equal"] and (tmp_path / "c.png").stat().st_size > 1000


def test_the_answer_block_on_hand_values():
    """The answer's lines: each pair's paired difference, its interval and verdict, provisional while a
    planned run is missing; the claims counted by verdict; the convergence of the three variants."""
    from scipy.stats import t as student_t
    from scipy.stats import ttest_rel

    values = dict(VALUES, tuned_static={1: 50.0, 2: 55.0, 3: 57.0, 4: 58.0, 5: 56.0})
    results = _results(values)
    rows = ablation.aggregate(SPEC, results)
    claims = [{"measured": {"mean_diff": 1.0}, "verdict": "reproduced"},
              {"measured": {"mean_diff": -1.0}, "verdict": "opposite, not significant"},
              {"measured": {"mean_diff": 2.0}, "verdict": "reproduced"}, {"measured": None, "verdict": "n/a"}]
    md = answer_markdown(rows, claims, ablation.convergence(SPEC, results),
                         not_run=[{"name": "galw_g4", "seed": 4}, {"name": "galw_g4", "seed": 5}])
    lines = md.splitlines()

    def interval(diffs):
        mean, half = sum(diffs) / 3, student_t.ppf(0.975, 2) * float(np.std(diffs, ddof=1)) / math.sqrt(3)
        p = ttest_rel(np.asarray(diffs) + 1.0, np.ones(3)).pvalue
        return f"Δ mAP {mean:+.2f}, 95 % CI [{mean - half:+.2f}, {mean + half:+.2f}], p {p:.3g}, 3 paired seeds"

    # galw_g4 - tuned_static: 10, 6, 8 (interval above 0); galw_g4 - equal: 10, 9, 11; tuned_static - equal:
    # 0, 3, 3 (interval holds 0)
    assert lines[2] == (f"* `galw_g4` vs `tuned_static`: {interval([10.0, 6.0, 8.0])}: **higher, significant** "
                        "(provisional: galw_g4 seeds 4, 5 without a result yet).")
    assert lines[3].startswith(f"* `galw_g4` vs `equal`: {interval([10.0, 9.0, 11.0])}: **higher, significant** (")
    assert lines[4] == f"* `tuned_static` vs `equal`: {interval([0.0, 3.0, 3.0])}: **no significant difference**."
    assert lines[5] == "* Paper claims measured here: 3 of 4: 2 reproduced, 1 opposite, not significant."
    assert lines[6] == ("* Converged (mAP moved less than 1 point over the last 20 % on every seed): `equal` yes, "
                        "`tuned_static` yes, `galw_g4` yes (provisional).")
    # a lower variant, a single pair, no pair at all, none of the three variants
    by = {r["name"]: r for r in rows}
    assert pair_verdict(ablation.paired(by["equal"], by["galw_g4"], "mAP")) == "lower, significant"
    one = ablation.aggregate(SPEC, _results({"equal": {1: 50.0}, "galw_g4": {1: 51.0}}))
    assert "**n/a (fewer than 2 paired seeds)**" in answer_markdown(one, [], ablation.convergence(SPEC, []))
    # a pair the dataset does not train is left out; one it plans but has not run says so
    assert "`tuned_static`" not in answer_markdown(one, [], ablation.convergence(SPEC, []))
    assert "* `galw_g4` vs `tuned_static`: no paired seeds yet." in answer_markdown(
        one, [], ablation.convergence(SPEC, []), not_run=[{"name": "tuned_static", "seed": 1}])
    assert answer_markdown(ablation.aggregate(SPEC, _results({"close": {1: 50.0}})), [],
                           ablation.convergence(SPEC, [])) == ""


def test_the_groups_table_sets_each_grouping_beside_the_mAP_of_the_seeds_that_found_it():
    galw = ["MODEL.GALW.GROUPING", "galw", "MODEL.GALW.NUM_GROUPS", "2"]

    def run(name, seed, mAP, groups, opts=galw):
        return {"name": name, "seed": seed, "mAP": mAP, "opts": opts,
                "groups": None if groups is None else {"groups": groups}}

    results = [run("galw_g2", 2, 40.0, [["c"], ["b", "a"]]),
               run("galw_g2", 1, 50.0, [["a", "b"], ["c"]]),  # the same grouping, listed another way
               run("galw_g2", 3, 30.0, [["a"], ["b", "c"]]),
               run("rulwf", 1, 20.0, [["a"], ["b"], ["c"]], opts=["MODEL.GALW.GROUPING", "per_task"]),
               run("equal", 1, 5.0, None, opts=["MODEL.GALW.ENABLED", "False"])]
    assert ablation.groups_table(results).splitlines() == [
        "| variant | groups | seeds | mAP | mean mAP |", "|---|---|---|---|---|",
        "| galw_g2 | {c} {a, b} | 1, 2 | 50.00, 40.00 | 45.00 |",
        "| galw_g2 | {a} {b, c} | 3 | 30.00 | 30.00 |"]
    assert ablation.groups_table(results[3:]) == ""
    # the report lists them after its other tables
    with_groups = [dict(r, opts=["MODEL.GALW.GROUPING", "galw"], groups={"groups": [["a", "b"], ["c"]]})
                   if r["name"] == "galw_g4" else r for r in _results(VALUES)]
    md, _ = ablation.report_markdown(SPEC, {"results": with_groups, "failed": []})
    assert md.index("Convergence: ") < md.index("The groups each GALW run trained with")
    assert "| galw_g4 | {c} {a, b} | 1, 2, 3 | 60.00, 61.00, 65.00 | 62.00 |" in md
    assert "The groups each GALW run trained with" not in ablation.report_markdown(
        SPEC, {"results": _results(VALUES), "failed": []})[0]
