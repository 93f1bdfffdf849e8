"""tools/ablation.py --max-iter / --opts: a reduced-scale ablation keeps the schedule's shape."""
import importlib.util
import os

import pytest
import yaml
from conftest import ROOT

from galw.ablation.spec import load_spec, schedule_opts

_spec = importlib.util.spec_from_file_location("galw_tools_ablation_cli", os.path.join(ROOT, "tools", "ablation.py"))
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)


def _spec_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  MAX_ITER: 300\n  STEPS: (200, 270)\n  WARMUP_ITERS: 20\n")
    spec = {"base_config": str(base), "seeds": [1], "common_opts": ["SOLVER.IMS_PER_BATCH", 2],
            "variants": [{"name": "equal", "opts": ["MODEL.GALW.ENABLED", False]},
                         {"name": "rulwf", "opts": ["MODEL.GALW.ENABLED", True, "MODEL.GALW.EPOCH_ITERS", 7]}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_schedule_opts_scale_the_steps(tmp_path):
    spec = load_spec(_spec_file(tmp_path))
    # 200 * 100 / 300 = 66.7 -> 67, 270 / 3 = 90; warm-up 20 kept.
    assert schedule_opts(spec, 100) == ["SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(67, 90)",
                                                 "SOLVER.WARMUP_ITERS", "20"]
    # 10 iterations: steps 6.7 -> 7 and 9, warm-up cut to the schedule.
    assert schedule_opts(spec, 10)[3:] == ["(7, 9)", "SOLVER.WARMUP_ITERS", "10"]
    with pytest.raises(ValueError, match="--max-iter"):
        schedule_opts(spec, 0)


def test_cli_appends_to_common_opts_and_variants_win(tmp_path, capsys):
    path = _spec_file(tmp_path)
    ablation.main(["--spec", path, "--out", str(tmp_path / "o"), "--dry-run", "--max-iter", "100",
                   "--opts", "MODEL.GALW.EPOCH_ITERS", "25"])
    equal, rulwf = [line for line in capsys.readouterr().out.splitlines() if "train_net.py" in line]
    common = "SEED 1 SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 100 SOLVER.STEPS (67, 90) SOLVER.WARMUP_ITERS 20 " \
             "MODEL.GALW.EPOCH_ITERS 25"
    assert equal.endswith(common + " MODEL.GALW.ENABLED False")
    assert rulwf.endswith(common + " MODEL.GALW.ENABLED True MODEL.GALW.EPOCH_ITERS 7")  # the last value wins
    with pytest.raises(SystemExit):
        ablation.main(["--spec", path, "--out", str(tmp_path / "o"), "--dry-run", "--opts", "SOLVER.MAX_ITER"])
