"""From a run's config.yaml to detectron2's ``DefaultPredictor``: the predictor feeds the model the image
the evaluation's mapper gives it (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST follow the person-search test size,
galw.config.sync_test_size), and a checkpoint's GALW loss-weighting state is skipped with one line that
says why."""
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import CONFIG_DIR
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from galw.checkpoint import AtomicCheckpointer
from galw.config import add_galw_config, sync_test_size
from galw.config_file import load_config
from galw.data.mapper import PersonSearchDatasetMapper
from galw.demo.config import DEFAULT_CONFIG, build_cfg, save_config

#: (height, width): SynthPS's frame, landscape and portrait photos, a thin strip, and 87x174, whose fit
#: into the demo's 213x160 is a half-pixel tie (106.5 rows) that the mapper once rounded down and
#: detectron2's ResizeShortestEdge rounds up.
SHAPES = [(240, 320), (1080, 1920), (400, 300), (60, 500), (87, 174)]


def _demo_run_config(tmp_path):
    """The demo's config.yaml read back the way docs/export.md says (get_cfg + add_galw_config + merge)."""
    path = save_config(build_cfg(DEFAULT_CONFIG, str(tmp_path / "run"), seed=0, opts=[]))
    cfg = get_cfg()
    add_galw_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.mark.slow
def test_default_predictor_feeds_the_image_the_evaluation_does(tmp_path):
    cfg = _demo_run_config(tmp_path)
    ps = (cfg.INPUT.PS.TEST_SHORT_SIDE, cfg.INPUT.PS.TEST_LONG_SIDE)
    assert ps == (160, 213)  # the demo config's own test size, not detectron2's 800/1333
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == ps
    predictor = DefaultPredictor(cfg)
    seen = []
    predictor.model.register_forward_pre_hook(lambda module, args: seen.append(args[0][0]["image"]))
    mapper = PersonSearchDatasetMapper(cfg, is_train=False)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SHAPES):
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = str(tmp_path / f"image{i}.png")
        cv2.imwrite(path, bgr)
        predictor(bgr)
        evaluated = mapper({"file_name": path, "image_id": i, "height": h, "width": w})["image"]
        assert seen[-1].shape == evaluated.shape, (h, w)
        assert torch.equal(seen[-1], evaluated.float()), (h, w)  # the same pixels
    assert [tuple(x.shape[1:]) for x in seen] == [(160, 213), (120, 213), (213, 160), (26, 213), (107, 213)]


def test_loading_sets_the_predictor_size_from_the_person_search_size():
    config = os.path.join(CONFIG_DIR, "alignps", "roi_alignps_R18_synth_cpu.yaml")
    cfg = load_config(config)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (240, 320)
    # a saved config.yaml evaluated at another size: the override of INPUT.PS carries the predictor's size
    saved = load_config(config, ["INPUT.PS.TEST_SHORT_SIDE", "144", "INPUT.PS.TEST_LONG_SIDE", "192"])
    assert (saved.INPUT.MIN_SIZE_TEST, saved.INPUT.MAX_SIZE_TEST) == (144, 192)
    same = load_config(config, ["INPUT.MIN_SIZE_TEST", "240", "INPUT.MAX_SIZE_TEST", "320"])
    assert (same.INPUT.MIN_SIZE_TEST, same.INPUT.MAX_SIZE_TEST) == (240, 320)
    with pytest.raises(ValueError, match=r"INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST are 900/1500, but the person-search "
                                         r"test size INPUT.PS.TEST_SHORT_SIDE/TEST_LONG_SIDE is 240/320"):
        load_config(config, ["INPUT.MIN_SIZE_TEST", "900", "INPUT.MAX_SIZE_TEST", "1500"])
    stock = load_config(os.path.join(CONFIG_DIR, "stock", "faster_rcnn_R18_C4_cpu.yaml"))
    assert (stock.INPUT.MIN_SIZE_TEST, stock.INPUT.MAX_SIZE_TEST) == (128, 192)  # not a person-search model
    frozen = load_config(config)
    frozen.INPUT.PS.TEST_SHORT_SIDE = 100
    frozen.INPUT.MIN_SIZE_TEST, frozen.INPUT.MAX_SIZE_TEST = 800, 1333
    frozen.freeze()
    assert sync_test_size(frozen).INPUT.MIN_SIZE_TEST == 100 and frozen.is_frozen()


class _Net(nn.Module):
    def __init__(self, with_weighting=False):
        super().__init__()
        self.head = nn.Linear(2, 2)
        if with_weighting:
            self.galw_weighting = nn.Module()
            self.galw_weighting.log_sigma = nn.Parameter(torch.zeros(3))
            self.galw_weighting.register_buffer("k", torch.zeros(3))


def _galw_checkpoint(tmp_path):
    trained = _Net(with_weighting=True)
    with torch.no_grad():
        trained.galw_weighting.log_sigma.fill_(0.5)
        trained.galw_weighting.k.fill_(2.0)
        trained.head.weight.fill_(3.0)
    AtomicCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    return str(tmp_path / "model_final.pth")


def test_galw_weighting_state_is_skipped_with_one_line(tmp_path, caplog):
    path = _galw_checkpoint(tmp_path)
    model = _Net()
    with caplog.at_level(logging.INFO):
        AtomicCheckpointer(model).load(path)
    assert torch.equal(model.head.weight, torch.full((2, 2), 3.0))
    lines = [r.getMessage() for r in caplog.records if "galw_weighting.k" in r.getMessage()]
    assert lines == [
        "Not loaded: galw_weighting.k, galw_weighting.log_sigma, the GALW loss weighting's state (its learned task "
        "uncertainties) that training saves with the model; the loss weighting only scales the training losses, so "
        "inference does not need it (the model is complete without it)"
    ]
    assert not [r for r in caplog.records if "not used by the model" in r.getMessage()]


def test_galw_weighting_state_loads_into_a_model_that_has_it(tmp_path, caplog):
    path = _galw_checkpoint(tmp_path)
    model = _Net(with_weighting=True)
    with caplog.at_level(logging.INFO):
        AtomicCheckpointer(model).load(path)
    assert torch.equal(model.galw_weighting.log_sigma.detach(), torch.full((3,), 0.5))
    assert torch.equal(model.galw_weighting.k, torch.full((3,), 2.0))
    assert not [r for r in caplog.records if "Not loaded" in r.getMessage()]


def test_other_unused_keys_are_still_listed(tmp_path, caplog):
    trained = _Net(with_weighting=True)
    trained.extra = nn.Linear(1, 1)
    AtomicCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    with caplog.at_level(logging.INFO):
        AtomicCheckpointer(_Net()).load(str(tmp_path / "model_final.pth"))
    unused = [r.getMessage() for r in caplog.records if "not used by the model" in r.getMessage()]
    assert len(unused) == 1 and "extra." in unused[0] and "galw_weighting" not in unused[0]


@pytest.mark.slow
def test_default_predictor_skips_the_weighting_state_with_the_same_line(tmp_path, caplog):
    """DefaultPredictor loads through detectron2's own DetectionCheckpointer: the person-search model
    itself drops a training checkpoint's galw_weighting.* keys with the explaining line."""
    from galw_core.train_step import attach_weighting

    cfg = _demo_run_config(tmp_path)
    trained = attach_weighting(DefaultPredictor(cfg).model, cfg)
    AtomicCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    with caplog.at_level(logging.INFO):
        predictor = DefaultPredictor(cfg)
    assert not hasattr(predictor.model, "galw_weighting")
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("Not loaded: galw_weighting.")] == [
        "Not loaded: galw_weighting.k, galw_weighting.log_sigma, the GALW loss weighting's state (its learned task "
        "uncertainties) that training saves with the model; the loss weighting only scales the training losses, so "
        "inference does not need it (the model is complete without it)"
    ]
    assert not [m for m in messages if "not used by the model" in m]
    trained_state = {k: v for k, v in trained.state_dict().items() if not k.startswith("galw_weighting.")}
    assert all(torch.equal(v, trained_state[k]) for k, v in predictor.model.state_dict().items())
