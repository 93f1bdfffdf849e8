"""galw.ablation's runner continues an interrupted training from its checkpoints (train_net.py --resume) when the
folder's planned opts are the run's, refuses a folder of other opts, and keeps the resumed training's curve."""
import json
import os

import pytest
import yaml

from galw import ablation
from galw.ablation.runner import PLANNED_FILE


def _spec(tmp_path, max_iter="100"):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  DEVICE: cpu\n")
    spec = {"base_config": str(base), "seeds": [1], "common_opts": ["SOLVER.MAX_ITER", max_iter],
            "datasets": [{"name": "d0", "seed": 0, "size": "tiny"}],
            "variants": [{"name": "equal", "opts": ["MODEL.GALW.ENABLED", False]}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ablation.load_spec(str(path))


class Interrupted:
    """train_net.py killed after its checkpoint at iteration 59 and its evaluation at 79 (the first call), then
    resumed: it logs iterations 60.. again (other numbers) and finishes (later calls)."""

    def __init__(self, checkpoint_dir=""):
        self.commands, self.checkpoint_dir = [], checkpoint_dir

    def __call__(self, cmd, out_dir):
        self.commands.append(cmd)
        with open(os.path.join(out_dir, "metrics.json"), "a") as f:
            if len(self.commands) == 1:
                for it, m in ((39, 10.0), (59, 20.0), (79, 30.0)):
                    f.write(json.dumps({"iteration": it, "g/search/mAP": m, "g/search/top1": m}) + "\n")
                os.makedirs(os.path.join(out_dir, self.checkpoint_dir), exist_ok=True)
                with open(os.path.join(out_dir, self.checkpoint_dir, "last_checkpoint"), "w") as ck:
                    ck.write("model_0000059.pth")
                return -9
            f.write(json.dumps({"iteration": 69, "total_loss": 1.0}) + "\n")  # resumed after iteration 59
            for it, m in ((79, 31.0), (99, 40.0)):
                f.write(json.dumps({"iteration": it, "g/search/mAP": m, "g/search/top1": m}) + "\n")
        return 0


@pytest.mark.parametrize("checkpoint_dir", ["", "galw_phase1"])
def test_an_interrupted_run_resumes_and_keeps_the_resumed_curve(tmp_path, checkpoint_dir):
    spec, out, trainer = _spec(tmp_path), str(tmp_path / "out"), Interrupted(checkpoint_dir)
    first = ablation.run_ablation(spec, out, runner=trainer)
    assert [f["reason"] for f in first["failed"]] == ["exit code -9"] and "--resume" not in trainer.commands[0]
    run_dir = os.path.join(out, "equal", "seed1")
    with open(os.path.join(run_dir, PLANNED_FILE)) as f:
        assert json.load(f) == {"opts": ["SOLVER.MAX_ITER", "100", "MODEL.GALW.ENABLED", "False"]}
    second = ablation.run_ablation(spec, out, runner=trainer)
    assert second["failed"] == [] and "--resume" in trainer.commands[1]
    (result,) = second["results"]
    assert [(p["iteration"], p["mAP"]) for p in result["curve"]] == [(39, 10.0), (59, 20.0), (79, 31.0), (99, 40.0)]
    assert result["mAP"] == 40.0
    assert len(trainer.commands) == 2 and ablation.run_ablation(spec, out, runner=trainer)["failed"] == []
    assert len(trainer.commands) == 2  # finished: not trained again


def test_checkpoints_of_other_opts_are_an_error_before_anything_trains(tmp_path):
    out, trainer = str(tmp_path / "out"), Interrupted()
    ablation.run_ablation(_spec(tmp_path), out, runner=trainer)
    with pytest.raises(ValueError, match=r"equal/seed1: holds the checkpoints of an unfinished training with other opts "
                                         r"than planned \(SOLVER.MAX_ITER: trained 100, planned 200\); "
                                         r"the planned run has opts \['SOLVER.MAX_ITER', '200'"):
        ablation.run_ablation(_spec(tmp_path, max_iter="200"), out, runner=trainer)
    os.remove(os.path.join(out, "equal", "seed1", PLANNED_FILE))
    with pytest.raises(ValueError, match="with no record of its opts"):
        ablation.run_ablation(_spec(tmp_path), out, runner=trainer)
    assert len(trainer.commands) == 1
