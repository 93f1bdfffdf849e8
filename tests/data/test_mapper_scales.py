"""Multi-scale training draws one of the references' six (long, short) bound pairs
("value", default) or long and short bounds independently ("range"), on a 1920x1080 PRW frame."""
import numpy as np
import pytest

import galw
from detectron2.config import get_cfg

from galw.data.mapper import ChoiceLongShortResize, PersonSearchDatasetMapper, RandomLongShortResize

FRAME = np.zeros((1080, 1920, 3), dtype=np.uint8)
#: (h, w) of a 1920x1080 frame under each reference scale, by hand: factor min(L/1920, S/1080).
REFERENCE_SIZES = {(375, 667), (563, 1000), (750, 1333), (844, 1500), (937, 1666), (1125, 2000)}


def _train_resize(*opts):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_list(list(opts))
    return PersonSearchDatasetMapper(cfg, is_train=True).augmentations.augs[0]


def _sizes(resize, n):
    np.random.seed(0)
    out = []
    for _ in range(n):
        t = resize.get_transform(FRAME)
        out.append((t.new_h, t.new_w))
    return out


def test_value_mode_is_the_default_and_draws_the_six_pairs():
    resize = _train_resize()
    assert isinstance(resize, ChoiceLongShortResize)
    sizes = _sizes(resize, 600)
    assert set(sizes) == REFERENCE_SIZES
    mean_factor = np.mean([w / 1920 for _, w in sizes])
    assert mean_factor == pytest.approx(0.709, abs=0.015)  # (0.347 + 0.521 + ... + 1.042) / 6
    at_or_above_test = np.mean([w >= 1500 for _, w in sizes])  # test scale 1500x900
    assert at_or_above_test == pytest.approx(0.5, abs=0.06)


def test_range_mode_draws_long_and_short_independently():
    resize = _train_resize("INPUT.PS.TRAIN_SCALE_MODE", "range")
    assert isinstance(resize, RandomLongShortResize)
    sizes = _sizes(resize, 2000)
    mean_factor = np.mean([w / 1920 for _, w in sizes])
    assert mean_factor == pytest.approx(0.596, abs=0.015)
    assert len(set(sizes)) > 100


def test_bad_scale_mode_and_scales_are_errors():
    with pytest.raises(ValueError, match="TRAIN_SCALE_MODE"):
        _train_resize("INPUT.PS.TRAIN_SCALE_MODE", "choice")
    with pytest.raises(ValueError, match="TRAIN_SCALES"):
        ChoiceLongShortResize([(667,)])
