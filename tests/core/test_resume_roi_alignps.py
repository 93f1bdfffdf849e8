"""Resume is exact for ROI-AlignPS* in both phases of a GALW training (tests/core/resume_helpers.py)."""
import pytest

from resume_helpers import interrupted_then_resumed, reference_fixture, sigkill_then_resumed

pytestmark = pytest.mark.slow

FAMILY = "roi_alignps"
reference = reference_fixture(FAMILY)


@pytest.mark.parametrize("phase", ["phase_one", "phase_two"])
def test_interrupted_then_resumed_matches_uninterrupted(phase, reference, tmp_path, monkeypatch):
    interrupted_then_resumed(FAMILY, (phase,), reference, tmp_path, monkeypatch)


def test_sigkill_at_random_iteration_then_resume_matches_uninterrupted(reference, tmp_path):
    sigkill_then_resumed(FAMILY, reference, tmp_path)
