"""galw.export replaces torchvision's fake (shape) implementation of ``torchvision::nms`` on every
torch the project supports: torch releases before pytorch/pytorch#182293 (2.11, say) refuse a second
``register_fake`` of an operator unless ``allow_override=True`` is passed, so importing galw.export
(and with it galw.search) failed where torchvision had registered its own."""
import json
import os
import subprocess
import sys

from conftest import ROOT

_CODE = """
import functools, json, sys
sys.path[:0] = [{package_dir!r}, {root!r}]
import torch
# before pytorch/pytorch#182293 torch refused a second fake registration of an operator by default.
torch.library.register_fake = functools.partial(torch.library.register_fake, allow_override=False)
import torchvision  # registers its own fake torchvision::nms
import galw.export  # noqa: F401
from torch._library.simple_registry import singleton
print(json.dumps({{"source": singleton.find("torchvision::nms").fake_impl.kernel.source}}))
"""


def test_galw_export_replaces_torchvision_nms_shape_where_overrides_are_opt_in():
    code = _CODE.format(package_dir=os.path.join(ROOT, "projects", "GALW"), root=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    source = json.loads(out.stdout.strip().splitlines()[-1])["source"]
    assert os.path.join("galw", "export.py") in source, source
