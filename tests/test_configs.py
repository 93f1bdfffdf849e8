"""Every shipped config loads into get_cfg + add_galw_config (no unknown keys); every GALW config's
TASKS / TASK_KINDS are exactly the losses its model returns, in the order and kinds of the loss-key table of docs/models.md;
every ablation variant's MODEL.GALW values are accepted by the GALW core."""
import functools
import glob
import importlib.util
import os

import pytest
import torch

import galw
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from alignps_helpers import SYNTH_NUM_PIDS, synthetic_batch
from galw_core.config import LINKAGES, MODES
from galw_core.hook import fixed_groups_from_config
from galw_core.probe import select_shared_parameters
from galw_core.weighting import LossWeighting
from conftest import ALIGNPS_TASKS, CONFIG_DIR, NAE_TASKS, ROOT, TASK_KINDS

ABLATION_SPEC = os.path.join(ROOT, "tools", "ablation_spec.yaml")  # tools/ablation.py's table, not a detectron2 config

#: The loss keys each branch documents (docs/models.md, docs/alignps.md, docs/attributes.md).
BRANCH_KEYS = {
    "NAEBranch": NAE_TASKS,
    "AlignPSBranch": ALIGNPS_TASKS,
    "AttributeBranch": ["loss_attr"],
}
NUM_TEST_ATTRIBUTES = 2

CONFIGS = sorted(os.path.relpath(p, CONFIG_DIR) for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))


def load(rel, *opts):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, rel))  # KeyError on a key no part defines
    cfg.merge_from_list(list(opts))
    return cfg


def galw_configs():
    return [rel for rel in CONFIGS if load(rel).MODEL.GALW.ENABLED]


def expected_tasks(cfg):
    """The loss keys of the config's branches, in the order of docs/models.md's loss-key table."""
    keys = [k for b in cfg.MODEL.PERSON_SEARCH.BRANCHES for k in BRANCH_KEYS[b]]
    return [k for k in TASK_KINDS if k in keys]


def test_the_configs_are_found():
    assert "alignps/roi_alignps_R50_prw_galw.yaml" in CONFIGS and "stock/faster_rcnn_R18_C4_cpu.yaml" in CONFIGS
    assert os.path.isfile(ABLATION_SPEC)
    assert len(galw_configs()) >= 10


@pytest.mark.parametrize("rel", CONFIGS)
def test_config_loads_with_known_keys_only(rel):
    cfg = load(rel)
    if cfg.MODEL.META_ARCHITECTURE == "PersonSearch":
        for b in cfg.MODEL.PERSON_SEARCH.BRANCHES:
            assert b in BRANCH_KEYS, f"{rel}: unknown branch {b}"
        assert cfg.MODEL.PERSON_SEARCH.DETECTOR in cfg.MODEL.PERSON_SEARCH.BRANCHES
        assert cfg.MODEL.PERSON_SEARCH.EMBEDDER in cfg.MODEL.PERSON_SEARCH.BRANCHES
        assert cfg.SOLVER.MAX_ITER > max(cfg.SOLVER.STEPS), rel


def test_an_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.join(CONFIG_DIR, "alignps", "alignps_R50_prw_galw.yaml")}"\n'
                   "MODEL:\n  GALW:\n    NUM_GROUP: 3\n")
    with pytest.raises(KeyError, match="NUM_GROUP"):
        load(str(bad))


@pytest.mark.parametrize("rel", [r for r in CONFIGS if r.endswith("_galw.yaml")])
def test_galw_config_tasks_follow_the_contract(rel):
    cfg = load(rel)
    g = cfg.MODEL.GALW
    assert g.ENABLED
    assert list(g.TASKS) == expected_tasks(cfg), rel
    assert list(g.TASK_KINDS) == [TASK_KINDS[t] for t in g.TASKS], rel
    # The paper's GALW: RULWF over groups from the gradient trends, lambda 1, two trainings.
    assert (g.WEIGHTING, g.GROUPING, g.LAMBDA, g.MODE) == ("rulwf", "galw", 1.0, "two_phase")
    single_branch = len(cfg.MODEL.PERSON_SEARCH.BRANCHES) == 1
    # Phase one trains the paper's baseline: equal weights for NAE and AlignPS, ROI-AlignPS*'s manual ones.
    assert g.PROBE_WEIGHTING == ("equal" if single_branch else "manual"), rel
    assert g.NUM_GROUPS == (3 if single_branch else 4)  # paper Table 7: NAE, AlignPS 3; ROI-AlignPS* 4
    assert g.LINKAGE in LINKAGES and g.MODE in MODES
    epoch = g.EPOCH_ITERS
    assert epoch > 0 and 1 <= g.PROBE_PERIOD <= epoch, rel
    if cfg.MODEL.RESNETS.DEPTH == 50:
        assert g.PROBE_EPOCHS == 0  # the paper: phase one = the whole first training
    probed_epochs = g.PROBE_EPOCHS if g.PROBE_EPOCHS > 0 else cfg.SOLVER.MAX_ITER // epoch
    assert probed_epochs >= 2, f"{rel}: Eq. 7 needs >= 2 epochs of Gamma"
    assert probed_epochs * epoch <= cfg.SOLVER.MAX_ITER, rel


def test_paper_schedule_epochs_are_whole():
    """EPOCH_ITERS of the R-50 configs: one epoch of the train set at the config's batch size (hand values)."""
    for rel, epoch, images in [("alignps/roi_alignps_R50_cuhk_galw.yaml", 2241, 11206),
                               ("alignps/roi_alignps_R50_prw_galw.yaml", 1140, 5704),
                               ("attr/roi_alignps_attr_R50_prw_galw.yaml", 1140, 5704),
                               ("alignps/alignps_R50_cuhk_galw.yaml", 2801, 11206)]:
        cfg = load(rel)
        assert cfg.MODEL.GALW.EPOCH_ITERS == epoch == images // cfg.SOLVER.IMS_PER_BATCH
        assert cfg.SOLVER.MAX_ITER // epoch == 24 and cfg.MODEL.GALW.PROBE_PERIOD == 100


def _model_opts(cfg):
    opts = ["DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.DEVICE", "cpu", "MODEL.PERSON_SEARCH.PRETRAINED", "",
            "MODEL.OIM.NUM_LABELED", SYNTH_NUM_PIDS, "MODEL.ATTRIBUTE.NUM_ATTRIBUTES", NUM_TEST_ATTRIBUTES]
    return opts


@functools.lru_cache(maxsize=None)
def _losses_and_shared(branches, depth, rel):
    """One training forward of the config's model on a tiny batch: (loss keys, shared param names)."""
    cfg = load(rel)
    cfg.merge_from_list(_model_opts(cfg))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(cfg)
        model.train()
        batch = synthetic_batch()
        for _i, item in enumerate(batch):
            n = len(item["instances"])
            item["instances"].gt_attributes = torch.tensor([[1, -1], [0, 1], [1, 0]][:n], dtype=torch.int64)
        with EventStorage(0):
            losses = model(batch)
    finally:
        torch.set_num_threads(threads)
    weighting = LossWeighting(cfg)  # raises naming a configured task the model does not produce (or vice versa)
    total = weighting(losses)
    assert torch.isfinite(total), rel
    shared = [n for n, _ in select_shared_parameters(model, cfg.MODEL.GALW.SHARED_PARAM_PREFIXES)]
    return tuple(losses), tuple(shared)


@pytest.mark.parametrize("rel", [r for r in CONFIGS if r.endswith("_galw.yaml")])
def test_galw_tasks_are_the_models_losses(rel):
    """R-18 synthetic models run as configured; R-50 ones (which differ only in data and schedule
    within a branch list) share one build per branch list, all at 128x96 inputs (seconds)."""
    cfg = load(rel)
    branches, depth = tuple(cfg.MODEL.PERSON_SEARCH.BRANCHES), cfg.MODEL.RESNETS.DEPTH
    key_rel = rel
    if depth == 50:  # the first R-50 GALW config with this branch list stands for all of them
        key_rel = next(r for r in CONFIGS if r.endswith("_galw.yaml") and load(r).MODEL.RESNETS.DEPTH == 50
                       and tuple(load(r).MODEL.PERSON_SEARCH.BRANCHES) == branches)
    loss_keys, shared = _losses_and_shared(branches, depth, key_rel)
    assert sorted(loss_keys) == sorted(cfg.MODEL.GALW.TASKS), rel
    # Eq. 6's shared layers are the trunk's trainable res2..res4 (R-50: FrozenBN, res2 frozen).
    stages = {n.split(".")[1] for n in shared}
    assert all(n.startswith("backbone.") for n in shared)
    assert stages == ({"res3", "res4"} if cfg.MODEL.BACKBONE.FREEZE_AT >= 2 else {"res2", "res3", "res4"}), rel


def _ablation():
    spec_path = os.path.join(ROOT, "tools", "ablation.py")
    spec = importlib.util.spec_from_file_location("galw_tools_ablation_cfg", spec_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variant_cfgs(search=False):
    """The config of every planned run (seed 1; tuned_static with the first candidate's weights), or
    with ``search`` of every search run."""
    from galw.ablation import TUNED_WEIGHTS, plan_search, weights_text

    ablation = _ablation()
    spec = ablation.load_spec(ABLATION_SPEC)
    base = ablation.base_config_path(spec)
    tuned = weights_text(spec["search"]["candidates"][0]["weights"])
    runs = plan_search(spec, "/nonexistent") if search else ablation.plan_runs(spec, "/nonexistent",
                                                                               seeds=spec["seeds"][:1])
    for run in runs:
        run["opts"] = [tuned if o == TUNED_WEIGHTS else o for o in run["opts"]]
        cfg = get_cfg()
        galw.add_galw_config(cfg)
        cfg.merge_from_file(base)
        cfg.merge_from_list([str(o) for o in spec["common_opts"]] + run["opts"])  # KeyError on a wrong key
        yield spec, run, cfg


def test_ablation_base_is_roi_alignps_galw():
    ablation = _ablation()
    spec = ablation.load_spec(ABLATION_SPEC)
    assert spec["base_config"] == "projects/GALW/configs/alignps/roi_alignps_R18_synth_galw.yaml"
    assert os.path.isfile(ablation.base_config_path(spec))


def test_ablation_variants_use_real_keys_and_values():
    seen = set()
    for _spec, run, cfg in _variant_cfgs():
        g = cfg.MODEL.GALW
        name = run["name"]
        seen.add(name)
        assert list(g.TASKS) == expected_tasks(cfg) and len(g.TASKS) == 10, name  # t1..t10 of ROI-AlignPS*
        if not g.ENABLED:
            assert name == "equal"
            continue
        weighting = LossWeighting(cfg)
        assert g.LINKAGE in LINKAGES and g.MODE in MODES, name
        if run["groups_from"]:
            assert g.GROUPING == "galw" and 2 <= run["groups_from"]["num_groups"] <= len(g.TASKS), name
            groups = None
        else:
            groups = fixed_groups_from_config(cfg, list(g.TASKS))  # raises on a bad grouping or value
        weighting.configure(g.WEIGHTING, groups)  # raises on a bad weighting name / manual weights
        if name == "manual":  # Table 1's best ROI-AlignPS* row: w3 = w5..w9 = 10, others 1
            assert list(g.MANUAL_WEIGHTS) == [1, 1, 10, 1, 10, 10, 10, 10, 10, 1]
        if name == "branch_grouping":
            assert groups == [sorted(BRANCH_KEYS["NAEBranch"]), sorted(BRANCH_KEYS["AlignPSBranch"])]
        if name == "semantic_grouping_3":  # {t5, t6, t7}, {t3, t10}, {t1, t2, t4, t8, t9}
            t = list(g.TASKS)
            assert [sorted(x) for x in groups] == [sorted([t[4], t[5], t[6]]), sorted([t[2], t[9]]),
                                                    sorted([t[0], t[1], t[3], t[7], t[8]])]
        if name in ("random_grouping_a", "random_grouping_b"):  # Table 5's two random groupings of 4
            t = list(g.TASKS)
            paper = {"random_grouping_a": [[0, 4], [2, 6], [5, 9], [1, 3, 7, 8]],
                     "random_grouping_b": [[0, 1], [2, 4, 6], [5], [3, 7, 8, 9]]}[name]
            assert [sorted(x) for x in groups] == [sorted(t[i] for i in group) for group in paper]
        if name == "galw_single_run":
            assert (g.MODE, g.GROUPING, g.NUM_GROUPS) == ("single_run", "galw", 4)
    assert {"equal", "manual", "tuned_static", "ulwf", "rulwf", "galw_g4", "branch_grouping",
            "random_grouping_a", "random_grouping_b", "galw_single_run"} <= seen


def test_ablation_search_trains_static_weights_on_the_validation_split():
    """Every candidate of the weight search is a valid manual weighting of t1..t10, trained and
    scored on the registered validation split of the training identities, not the test gallery."""
    from detectron2.data import DatasetCatalog

    seen = {}
    for _spec, run, cfg in _variant_cfgs(search=True):
        g = cfg.MODEL.GALW
        assert (g.ENABLED, g.WEIGHTING, g.GROUPING) == (True, "manual", "per_task"), run["name"]
        LossWeighting(cfg).configure(g.WEIGHTING, fixed_groups_from_config(cfg, list(g.TASKS)))
        assert cfg.DATASETS.TRAIN == ("synth_prw_idval_train",) and cfg.DATASETS.TEST == ("synth_prw_idval_gallery",)
        assert set(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST) <= set(DatasetCatalog.list())
        seen[run["name"]] = list(g.MANUAL_WEIGHTS)
    assert len(seen) >= 8 and len({tuple(w) for w in seen.values()}) == len(seen)
    manual = [1, 1, 10, 1, 10, 10, 10, 10, 10, 1]  # the manual variant's (Table 1's best row)
    assert seen["equal"] == [1] * 10 and seen["table1_best"] == manual
    assert seen["nae_x2"] == [2] * 5 + [1] * 5 and seen["alignps_x0.5"] == [1] * 5 + [0.5] * 5
    assert seen["reid_x5"] == [1, 1, 1, 1, 5, 1, 1, 1, 5, 5]  # loss_nae_oim, loss_aps_oim, loss_aps_tri


def test_ablation_runs_the_demo_model_on_a_schedule_that_ends_at_its_final_lr():
    """Every ablation run trains the demo's model, input and learning rate (the demo's config), on the
    study's own schedule: its last LR step comes before the last 20 % of the iterations, the window
    from which the report reads convergence (galw/ablation/convergence.py TAIL_START)."""
    from galw.ablation.convergence import TAIL_START

    demo = get_cfg()
    galw.add_galw_config(demo)
    demo.merge_from_file(os.path.join(CONFIG_DIR, "alignps", "roi_alignps_R18_synth_galw.yaml"))
    for _spec, run, cfg in _variant_cfgs():
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (2000, (1200,)), run["name"]
        assert max(cfg.SOLVER.STEPS) <= TAIL_START * cfg.SOLVER.MAX_ITER, run["name"]
        for key in ("SOLVER.WARMUP_ITERS", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH",
                    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
                    "INPUT.PS.TRAIN_LONG_SIDE_RANGE", "INPUT.PS.TEST_LONG_SIDE"):
            node_run, node_demo = cfg, demo
            for part in key.split("."):
                node_run, node_demo = getattr(node_run, part), getattr(node_demo, part)
            assert node_run == node_demo, (run["name"], key)
        assert cfg.MODEL.GALW.PROBE_EPOCHS * cfg.MODEL.GALW.EPOCH_ITERS == 25, run["name"]
