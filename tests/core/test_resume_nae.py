"""Resume is exact for NAE in both phases of a GALW training (tests/core/resume_helpers.py)."""
import pytest

from resume_helpers import interrupted_then_resumed, reference_fixture

pytestmark = pytest.mark.slow

FAMILY = "nae"
reference = reference_fixture(FAMILY)


def test_interrupted_in_each_phase_then_resumed_matches_uninterrupted(reference, tmp_path, monkeypatch):
    interrupted_then_resumed(FAMILY, ("phase_one", "phase_two"), reference, tmp_path, monkeypatch)
