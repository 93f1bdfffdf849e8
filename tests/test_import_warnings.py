"""Importing the packages prints no warning the project can prevent (``make demo`` and every tool
import them first)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", ["galw_core", "galw"])
def test_import_prints_no_future_warning(module):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "projects", "GALW"), REPO]))
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", f"import {module}"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Warning" not in out.stderr, out.stderr[-2000:]


def test_a_users_jit_script_still_warns():
    """The filter is scoped to the two third-party imports, not to every torch.jit.script call."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "projects", "GALW"), REPO]))
    env.pop("PYTHONWARNINGS", None)
    code = ("import galw, torch, warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    torch.jit.script(torch.nn.Identity())\n"
            "print(sum('torch.jit.script' in str(x.message) for x in w))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) >= 1
