"""galw.ablation's runner continues an interrupted training from its checkpoints (train_net.py --resume) when the
folder's planned opts are the run's, refuses a folder of other opts, and keeps the resumed training's curve."""
import json
import os

import pytest
import yaml

from galw import ablation
from galw.ablation.runner import FINGERPRINT, PLANNED_FILE, RESULT_FILE


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
        assert json.load(f) == {"opts": ["SOLVER.MAX_ITER", "100", "MODEL.GALW.ENABLED", "False"],
                                FINGERPRINT: ablation.config_fingerprint(spec)}
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


def test_a_run_of_other_config_files_is_neither_resumed_nor_reused(tmp_path):
    """The opts alone do not say what trained: a changed base config (or a file it inherits from) changes
    the fingerprint its runs record, and their checkpoints and results are an error, not silently mixed."""
    parent = tmp_path / "parent.yaml"
    parent.write_text("SOLVER:\n  BASE_LR: 0.01\n")
    spec = _spec(tmp_path)
    (tmp_path / "base.yaml").write_text('_BASE_: "parent.yaml"\nMODEL:\n  DEVICE: cpu\n')
    assert ablation.base_config_chain(spec) == [str(tmp_path / "base.yaml"), str(parent)]
    first = ablation.config_fingerprint(spec)
    assert len(first) == 16 and ablation.config_fingerprint(spec) == first
    out, trainer = str(tmp_path / "out"), Interrupted()
    ablation.run_ablation(spec, out, runner=trainer)  # killed after its checkpoint
    parent.write_text("SOLVER:\n  BASE_LR: 0.02\n")  # a file the base config inherits from changes
    changed = ablation.config_fingerprint(spec)
    assert changed != first
    with pytest.raises(ValueError, match=r"equal/seed1: holds the checkpoints of an unfinished training started from "
                                         rf"config files of fingerprint {first}, while .*base.yaml and its _BASE_ files "
                                         rf"give {changed} now"):
        ablation.run_ablation(spec, out, runner=trainer)
    assert len(trainer.commands) == 1
    parent.write_text("SOLVER:\n  BASE_LR: 0.01\n")
    assert ablation.run_ablation(spec, out, runner=trainer)["failed"] == []  # resumed, finished
    result = os.path.join(out, "equal", "seed1", RESULT_FILE)
    with open(result) as f:
        assert json.load(f)["data"][FINGERPRINT] == first
    parent.write_text("SOLVER:\n  BASE_LR: 0.02\n")
    with pytest.raises(ValueError, match=r"seed1/ablation_result.json: was trained from config files of fingerprint "
                                         rf"{first}, while"):
        ablation.run_ablation(spec, out, runner=trainer)
    with open(result) as f:
        doc = json.load(f)
    doc["data"].pop(FINGERPRINT)
    with open(result, "w") as f:
        json.dump(doc, f)
    with pytest.raises(ValueError, match=r"was trained from config files of fingerprint <none recorded>"):
        ablation.run_ablation(spec, out, runner=trainer)
    assert len(trainer.commands) == 2
    (tmp_path / "base.yaml").write_text('_BASE_: "base.yaml"\n')
    with pytest.raises(ValueError, match=r"base.yaml: _BASE_ .*base.yaml' closes a cycle of config files"):
        ablation.config_fingerprint(spec)


class EditsTheConfig:
    """A training during which a file of the base config's chain is edited."""

    def __init__(self, path):
        self.path = path

    def __call__(self, cmd, out_dir):
        with open(self.path, "a") as f:
            f.write("# edited\n")
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            f.write(json.dumps({"iteration": 99, "g/search/mAP": 40.0, "g/search/top1": 40.0}) + "\n")
        return 0


def test_a_run_whose_config_files_change_while_it_trains_fails_and_keeps_no_result(tmp_path):
    spec = _spec(tmp_path)
    before = ablation.config_fingerprint(spec)
    outcome = ablation.run_ablation(spec, str(tmp_path / "out"), runner=EditsTheConfig(tmp_path / "base.yaml"))
    (failure,) = outcome["failed"]
    assert failure["reason"].startswith(f"its config files changed while it trained (fingerprint {before} at the start, "
                                        f"{ablation.config_fingerprint(spec)} at the end)")
    assert outcome["results"] == [] and not os.path.exists(tmp_path / "out" / "equal" / "seed1" / RESULT_FILE)


def test_the_chain_follows_a_list_of_bases_and_refuses_other_values(tmp_path):
    spec = _spec(tmp_path)
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("SOLVER:\n  BASE_LR: 0.01\n")
    (tmp_path / "base.yaml").write_text(f'_BASE_: ["a.yaml", "{tmp_path / "b.yaml"}"]\n')
    assert ablation.base_config_chain(spec) == [str(tmp_path / n) for n in ("base.yaml", "a.yaml", "b.yaml")]
    (tmp_path / "base.yaml").write_text("_BASE_: 3\n")
    with pytest.raises(ValueError, match=r"base.yaml: _BASE_ must be a file name or a list of file names, got 3"):
        ablation.config_fingerprint(spec)
