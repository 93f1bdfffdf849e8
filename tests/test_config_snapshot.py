"""Every config resolves to the values recorded in tests/configs_resolved.json (see config_snapshot.py),
so thinning a yaml file or moving a key to a base changes nothing a run trains.

The record was taken on pb1-detectron2 0.6; the official build's get_cfg() has other defaults of its
own, so the project's defaults are compared key by key and a config's values on top of the build's
defaults."""
import json
import os

import pytest
import yaml

from config_snapshot import CONFIG_DIR, SNAPSHOT, _flatten, config_files, project_keys, resolve

with open(SNAPSHOT) as _f:
    RECORDED = json.load(_f)


def test_every_config_is_recorded():
    assert config_files() == sorted(RECORDED["configs"])
    assert "alignps/roi_alignps_R18_synth_galw.yaml" in RECORDED["configs"]


def test_defaults_are_the_recorded_ones():
    assert project_keys() == RECORDED["project_keys"]
    now, recorded = resolve(), RECORDED["defaults"]
    changed = {k: (recorded.get(k), now.get(k)) for k in RECORDED["project_keys"] if now.get(k) != recorded.get(k)}
    assert not changed, f"default: (recorded, now) {changed}; if on purpose, rerun `python tests/config_snapshot.py`"


@pytest.mark.parametrize("rel", config_files())
def test_config_resolves_to_the_recorded_values(rel):
    values = resolve(rel)
    expected = {**resolve(), **RECORDED["configs"][rel]}
    changed = {k: (expected.get(k), values.get(k)) for k in set(values) | set(expected) if values.get(k) != expected.get(k)}
    assert not changed, (f"{rel}: key: (recorded, now) {changed}; if on purpose, rewrite the record with "
                         "`python tests/config_snapshot.py` and name the change in the commit")


@pytest.mark.parametrize("rel", config_files())
def test_config_sets_only_what_differs(rel):
    """No key of a config restates what its _BASE_ (or get_cfg() + add_galw_config) already gives."""
    with open(os.path.join(CONFIG_DIR, rel)) as f:
        raw = yaml.safe_load(f)
    base = raw.pop("_BASE_", None)
    inherited = resolve(os.path.normpath(os.path.join(os.path.dirname(rel), base))) if base else resolve()
    values = resolve(rel)
    restated = [k for k in _flatten(raw) if k != "VERSION" and values[k] == inherited[k]]
    assert not restated, f"{rel} restates inherited value(s) of {restated}"
