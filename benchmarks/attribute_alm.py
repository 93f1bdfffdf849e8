"""ALM memory and time: the module (gate after sampling) vs the direct gate-then-sample formulation.

Both compute the same logits (tests/test_attribute_alm.py checks it). Prints, for one pyramid level
at ROI-AlignPS*-Attr size, the bytes autograd keeps for backward and the forward+backward time.
Run: PYTHONPATH=$PWD/projects/GALW:$PWD .venv/bin/python benchmarks/attribute_alm.py [--boxes 40]
"""
import argparse
import time

import torch
import torch.nn.functional as F

import galw  # noqa: F401
from galw.modeling.attribute import AttributeLocalization, constrained_affine
from result_file import save


def direct_logits(alm: AttributeLocalization, x: torch.Tensor) -> torch.Tensor:
    """Tang et al.'s order: gate the map per attribute, then localise, sample, pool, classify."""
    squeezed = x.mean(dim=(2, 3))
    logits = []
    for a in range(alm.num_attributes):
        hidden = F.relu(squeezed @ alm.se_reduce_weight[a].T + alm.se_reduce_bias[a])
        gate = torch.sigmoid(hidden @ alm.se_expand_weight[a].T + alm.se_expand_bias[a])
        gated = x * gate[:, :, None, None] + x
        theta = constrained_affine(gated.amax(dim=(2, 3)) @ alm.loc_weight[a].T + alm.loc_bias[a])
        region = F.grid_sample(gated, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        logits.append(region.amax(dim=(2, 3)) @ alm.cls_weight[a] + alm.cls_bias[a])
    return torch.stack(logits, dim=1)


def measure(fn, x, repeats):
    """(distinct bytes saved for backward, seconds per forward+backward)."""
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x).sum().backward()
    return sum(saved.values()), (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=40, help="boxes in the batch (5 images x 8 people)")
    parser.add_argument("--channels", type=int, default=512, help="level channels (res3 level: 2 x CONV_DIM)")
    parser.add_argument("--attributes", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    alm = AttributeLocalization(args.channels, args.attributes)
    with torch.no_grad():
        alm.loc_weight.normal_(std=0.01)
    x = torch.randn(args.boxes, args.channels, args.resolution, args.resolution, requires_grad=True)
    with torch.no_grad():
        gap = (alm(x)[0] - direct_logits(alm, x)).abs().max().item()
    module_bytes, module_s = measure(lambda t: alm(t)[0], x, args.repeats)
    direct_bytes, direct_s = measure(lambda t: direct_logits(alm, t), x, args.repeats)
    print(f"boxes={args.boxes} channels={args.channels} attributes={args.attributes} "
          f"crop={args.resolution}x{args.resolution} device=cpu threads={torch.get_num_threads()}")
    print(f"max |logit difference|       : {gap:.2e}")
    print(f"saved for backward  module   : {module_bytes / 2**20:8.1f} MiB   direct: {direct_bytes / 2**20:8.1f} MiB"
          f"   ratio direct/module: {direct_bytes / module_bytes:.2f}")
    print(f"forward+backward    module   : {module_s * 1e3:8.1f} ms    direct: {direct_s * 1e3:8.1f} ms"
          f"    ratio direct/module: {direct_s / module_s:.2f}")
    save("attribute_alm", {
        "settings": {"boxes": args.boxes, "channels": args.channels, "attributes": args.attributes,
                     "crop": args.resolution, "repeats": args.repeats, "threads": torch.get_num_threads()},
        "rows": [{"formulation": name, "saved for backward (MiB)": round(b / 2**20, 1),
                  "forward+backward (ms)": round(s * 1e3, 1)}
                 for name, b, s in (("ALM module", module_bytes, module_s), ("direct", direct_bytes, direct_s))],
        "max |logit difference|": gap,
        "memory ratio direct/module": round(direct_bytes / module_bytes, 3),
        "time ratio direct/module": round(direct_s / module_s, 3),
    })


if __name__ == "__main__":
    main()
