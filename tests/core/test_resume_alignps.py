"""Resume is exact for AlignPS in both phases of a GALW training (tests/core/resume_helpers.py)."""
import pytest

from resume_helpers import PHASES, interrupted_then_resumed, reference_fixture

pytestmark = pytest.mark.slow

FAMILY = "alignps"
reference = reference_fixture(FAMILY)


@pytest.mark.parametrize("phase", PHASES)
def test_interrupted_then_resumed_matches_uninterrupted(phase, reference, tmp_path, monkeypatch):
    interrupted_then_resumed(FAMILY, phase, reference, tmp_path, monkeypatch)
