"""benchmarks/cpu_step.py's profile: the (op, input shapes) with the most self CPU time per step, and
the FLOP rate of the ops the profiler counts."""
import os
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_step  # noqa: E402


class MatmulArm:
    """Stands in for a training arm: each step is one 256 x 512 @ 512 x 384 product and a small add."""

    def __init__(self):
        self.a, self.b = torch.randn(256, 512), torch.randn(512, 384)

    def run(self, start, n):
        for _ in range(n):
            torch.mm(self.a, self.b).add_(1.0)


def test_profile_ranks_ops_by_shape_and_gives_the_matmul_rate(capsys):
    found = cpu_step.profile(MatmulArm(), steps=4, start=0, top=3)
    top = found["top"][0]
    assert (top["op"], top["input shapes"], top["calls/step"]) == ("aten::mm", "[[256, 512], [512, 384]]", 1.0)
    assert top["GFLOP/s"] > 0 and 0 < top["share %"] <= 100 and top["s/step"] > 0
    assert found["steps"] == 4 and found["self CPU s/step"] >= top["s/step"]
    # the profiler counts 2 * 256 * 512 * 384 FLOPs per product: the rate is that over the op's time
    assert top["GFLOP/s"] == pytest.approx(2 * 256 * 512 * 384 / (top["s/step"] * 1e9), rel=1e-6)
    assert "aten::mm" in capsys.readouterr().out
