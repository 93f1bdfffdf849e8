"""Every config resolves to the values recorded in tests/configs_resolved.json (see config_snapshot.py),
so thinning a yaml file or moving a key to a base changes nothing a run trains."""
import json

import pytest

from config_snapshot import SNAPSHOT, config_files, resolve

with open(SNAPSHOT) as _f:
    RECORDED = json.load(_f)


def test_every_config_is_recorded():
    assert config_files() == sorted(RECORDED["configs"])
    assert "alignps/roi_alignps_R18_synth_galw.yaml" in RECORDED["configs"]


def test_defaults_are_the_recorded_ones():
    now, recorded = resolve(), RECORDED["defaults"]
    changed = {k: (recorded.get(k), now.get(k)) for k in set(now) | set(recorded) if now.get(k) != recorded.get(k)}
    assert not changed, f"default: (recorded, now) {changed}; if on purpose, rerun `python tests/config_snapshot.py`"


@pytest.mark.parametrize("rel", config_files())
def test_config_resolves_to_the_recorded_values(rel):
    values = resolve(rel)
    expected = {**RECORDED["defaults"], **RECORDED["configs"][rel]}
    changed = {k: (expected.get(k), values.get(k)) for k in set(values) | set(expected) if values.get(k) != expected.get(k)}
    assert not changed, (f"{rel}: key: (recorded, now) {changed}; if on purpose, rewrite the record with "
                         "`python tests/config_snapshot.py` and name the change in the commit")
