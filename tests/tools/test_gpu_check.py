"""benchmarks/gpu_check.py, the parts that run without a GPU: finding and unpacking detectron2's
source, the install decision, the table, and the whole check at toy scale on the CPU."""
import argparse
import io
import glob
import os
import re
import subprocess
import sys
import tempfile
import tarfile

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402


def _tarball(path, top="detectron2-main"):
    with tarfile.open(path, "w:gz") as tar:
        data = b"__version__ = '0.6'\n"
        info = tarfile.TarInfo(f"{top}/detectron2/__init__.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_detectron2_source_found_and_unpacked_once(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tarball = _tarball(wheels / "detectron2-main-abc.tar.gz")
    assert gpu_check.find_detectron2_source("", str(wheels)) == tarball
    assert gpu_check.find_detectron2_source("/x/d2.tar.gz", str(wheels)) == "/x/d2.tar.gz"
    root = gpu_check.unpack_detectron2(tarball, str(tmp_path / "src"))
    assert root == str(tmp_path / "src" / "detectron2-main")
    assert (tmp_path / "src" / "detectron2-main" / "detectron2" / "__init__.py").is_file()
    assert gpu_check.unpack_detectron2(tarball, str(tmp_path / "src")) == root  # already there


def test_missing_packages_without_wheels_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "missing_modules", lambda: ["scipy"])
    args = argparse.Namespace(wheels=str(tmp_path / "none"), detectron2_source="")
    with pytest.raises(SystemExit, match=r"missing Python packages \['scipy'\] and no wheel folder"):
        gpu_check.prepare_environment(args)


def test_table_reports_every_figure():
    results = {
        "gpu tests": {"summary": "4 passed, 600 deselected in 50.0s", "ok": True},
        "train": {"config": "roi_alignps_R50_cuhk_galw.yaml", "iterations": 40, "batch": 5, "amp": True,
                  "images_per_s": 12.345, "peak_gib": 30.25, "probes": 8, "probes_rejected": 1,
                  "groups": [["a"], ["b"]], "phase": "grouped"},
        "inference": {"size": "1500x900", "images": 10, "roi_alignps_fp32_ms": 60.0, "roi_alignps_amp_ms": 40.0,
                      "torchvision_fp32_ms": 50.0, "torchvision_amp_ms": 30.0},
        "wall_s": 301.0,
    }
    text = gpu_check.table("header", results)
    assert "12.35 images/s, 30.2 GiB peak" in text and "1 rejected, phase grouped, 2 groups" in text
    assert "fp32 60.0 ms/image, AMP 40.0 ms/image" in text and "fp32 50.0 ms/image, AMP 30.0 ms/image" in text
    assert re.search(r"\| inference ratio ROI-AlignPS\* / torchvision \(fp32\) +\| 1\.20 \|", text)
    assert "4 passed" in text and "301 s" in text


@pytest.mark.slow
def test_whole_check_at_toy_scale_on_cpu():
    leftovers = os.path.join(tempfile.gettempdir(), "galw-gpu-check-*")
    before = set(glob.glob(leftovers))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--device", "cpu", "--tiny"],
                         capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "GALW-PS GPU check: no GPU" in out.stdout
    assert "images/s, peak memory n/a (CPU); GALW:" in out.stdout
    assert "rejected, phase grouped, 2 groups" in out.stdout
    assert "inference 320x192 ROI-AlignPS*" in out.stdout and "ms/image, AMP n/a (CPU)" in out.stdout
    assert set(glob.glob(leftovers)) == before, "the training stage left its run folder behind"
