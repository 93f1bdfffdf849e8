"""Importing the packages prints no warning the project can prevent (``make demo`` and every tool
import them first)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Each test starts a fresh interpreter importing torch, detectron2 and galw: 7-18 s apiece.
pytestmark = pytest.mark.slow


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



_ANCHORS = """
import galw, json, torch, warnings
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
cfg = get_cfg()
cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
generator = DefaultAnchorGenerator(cfg, [ShapeSpec(stride=8)])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if {user_first}:
        torch.meshgrid(torch.arange(2), torch.arange(3))
    anchors = generator([torch.zeros(1, 4, 3, 2)])[0].tensor
centres = sorted({{tuple(c) for c in ((anchors[:, :2] + anchors[:, 2:]) / 2).tolist()}})
print(json.dumps([sum("torch.meshgrid" in str(w.message) for w in caught), list(anchors.shape), centres]))
"""


@pytest.mark.parametrize("user_first, warnings_seen", [(False, 0), (True, 1)])
def test_anchor_generation_prints_no_meshgrid_warning(user_first, warnings_seen):
    """detectron2's anchor generator calls torch.meshgrid without ``indexing`` in every forward; only
    that call is silenced (torch warns once per process, so each case runs in its own), with the same
    anchors: a 3x2 map at stride 8 gives 6 positions x 3 aspect ratios x 2 sizes on the grid."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "projects", "GALW"), REPO]))
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run([sys.executable, "-c", _ANCHORS.format(user_first=user_first)], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen, shape, centres = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == warnings_seen
    assert shape == [36, 4]
    assert centres == [[x, y] for x in (0.0, 8.0) for y in (0.0, 8.0, 16.0)]
