"""The suite leaves no passing test's files on disk.

Its trainings write checkpoints of 45 MB each; with pytest's default retention one run left about
4 GB under /tmp/pytest-of-<user>, and the three runs pytest keeps can fill a small disk (torch.save
then fails in setup, in the suite's second leg). The repository's pytest
config must remove a passing test's tmp_path and keep a failing one's, for the post-mortem.
"""
import os
import subprocess
import sys

from conftest import ROOT

INNER = '''
def test_passes(tmp_path):
    (tmp_path / "from_passing.bin").write_bytes(b"0" * 4096)


def test_fails(tmp_path):
    (tmp_path / "from_failing.bin").write_bytes(b"1")
    assert False
'''


def files_under(root):
    return sorted(name for _, _, names in os.walk(root) for name in names)


def test_repo_config_removes_passing_tmp_paths_and_keeps_failing_ones(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    temproot = tmp_path / "temproot"
    temproot.mkdir()
    env = dict(os.environ, PYTEST_DEBUG_TEMPROOT=str(temproot))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.path.join(ROOT, "setup.cfg"),
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert "1 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    assert files_under(temproot) == ["from_failing.bin"]
