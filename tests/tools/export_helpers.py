"""The export tests' helpers: the eager reference outputs of three tiny models, a Python that can
import torch, torchvision and onnxruntime but neither detectron2 nor this project, and box matching."""
import os
import subprocess
import sys

import torch

#: The models whose eager outputs the export's model changes must keep: ROI-AlignPS* (AlignPS
#: detector, NAE ROI embedder), AlignPS alone (centre embeddings) and NAE (RPN + ROI heads).
REFERENCE_CONFIGS = {
    "roi_alignps": ("alignps/roi_alignps_R18_synth_cpu.yaml", ["MODEL.ALIGNPS.SCORE_THRESH_TEST", "0.011"]),
    "alignps": ("alignps/alignps_R18_synth_cpu.yaml", ["MODEL.ALIGNPS.SCORE_THRESH_TEST", "0.011"]),
    "nae": ("nae/nae_R18_synth_cpu.yaml", ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]),
}
REFERENCE_FILE = os.path.join(os.path.dirname(__file__), "data", "export_eager_reference.pt")
QUERY_BOX = [20.0, 16.0, 90.0, 150.0]


@torch.no_grad()
def eager_outputs(config_dir):
    """{model: {size: (boxes, scores, embeddings, query embedding)}} of each REFERENCE_CONFIGS model
    at its seeded random init, on seeded noise images of two sizes (1 thread: one summation order)."""
    import galw
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name, (config, opts) in REFERENCE_CONFIGS.items():
        cfg = get_cfg()
        galw.add_galw_config(cfg)
        cfg.merge_from_file(os.path.join(config_dir, config))
        cfg.merge_from_list(["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.OIM.NUM_LABELED", "3", *opts])
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        out[name] = {}
        for size in ((192, 256), (200, 136)):
            image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
            query = Instances(size, gt_boxes=Boxes(torch.tensor([QUERY_BOX])))
            result = model([{"image": image, "query_instances": query}])[0]
            inst = result["instances"]
            out[name]["x".join(map(str, size))] = (inst.pred_boxes.tensor, inst.scores, inst.embeddings,
                                                  result["query_embedding"])
    torch.set_num_threads(threads)
    return out


def isolated_site_packages(tmp_path):
    """A folder of links to every package of this interpreter's site-packages except detectron2, this
    project and the path hooks (.pth files): with ``python -I -S`` and only it on sys.path, what a
    deployment machine with torch, torchvision and onnxruntime alone can import."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    excluded = ("detectron2", "pb1_detectron2", "galw", "__editable__", "tools", "__pycache__")
    folder = tmp_path / "site"
    folder.mkdir()
    for entry in os.listdir(site):
        if entry.startswith(excluded) or entry.endswith(".pth"):
            continue
        os.symlink(os.path.join(site, entry), folder / entry)
    return folder


def run_isolated(code, site, *args, cwd):
    """Run ``code`` with ``python -I -S`` whose sys.path is the standard library and ``site``;
    fails the test with the child's stderr."""
    prelude = f"import sys; sys.path.insert(0, {str(site)!r})\n"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code, *map(str, args)],
                          capture_output=True, text=True, cwd=str(cwd))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def match_rows(want, got):
    """The permutation of ``got``'s rows (boxes [N, 4]) nearest ``want``'s, one to one (a detection
    order may differ between runtimes for near-equal scores)."""
    assert want.shape == got.shape, (want.shape, got.shape)
    order = torch.cdist(want.double(), got.double(), p=float("inf")).argmin(dim=1)
    assert sorted(order.tolist()) == list(range(len(got))), "boxes do not match one to one"
    return order
