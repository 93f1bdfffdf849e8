#!/usr/bin/env python
"""One GPU check (``make gpu-check``) for a freshly installed GPU machine, in one table:

1. the tests marked ``gpu`` (real AMP path of GALW, ...);
2. a few dozen AMP training iterations of ROI-AlignPS* R-50 with GALW probing at the paper's
   scale (batch 5, multi-scale long side 667..2000 / short side 400..1200) on SynthPS frames:
   images/s and peak GPU memory;
3. fp32 and AMP inference ms per 1500x900 image of ROI-AlignPS* R-50 beside torchvision's
   ``fasterrcnn_resnet50_fpn(weights=None)``, in the same run (paper: 69 ms for ROI-AlignPS*
   on a TITAN RTX).

The machine needs Python >= 3.10 with torch and torchvision (any recent version, e.g. 3.12 +
torch 2.11) and no internet: what is missing is installed from files brought along:

* Python packages from a wheel folder (``--wheels``, default ``.gpu-wheels``; made beforehand on
  a machine with a package registry by ``make gpu-wheels``), ``pip install --no-index``;
* detectron2, when not importable, from its source tarball (``--detectron2-source``; default:
  the first ``detectron2-*.tar.gz`` in the wheel folder, ``../shared/wheels`` or
  ``shared/wheels``), unpacked and used as pure Python (``galw_core.compat`` stands in for its
  compiled ops, which this project does not use).

``--device cpu --tiny`` runs the same steps at toy scale (ResNet-18, 3 iterations, small images,
fp32 training, fp32 inference only) so that the script itself is tested on CPU
(tests/tools/test_gpu_check.py).
"""
import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = "GPU_CHECK_RESULT "
#: import name -> pip requirement, for what the project imports besides torch / torchvision.
REQUIREMENTS = {
    "numpy": "numpy", "scipy": "scipy", "sklearn": "scikit-learn", "cv2": "opencv-python-headless",
    "fvcore": "fvcore", "iopath": "iopath", "pycocotools": "pycocotools", "yacs": "yacs",
    "omegaconf": "omegaconf", "hydra": "hydra-core", "matplotlib": "matplotlib", "tqdm": "tqdm",
    "pytest": "pytest", "tabulate": "tabulate", "termcolor": "termcolor", "cloudpickle": "cloudpickle",
    "yaml": "pyyaml", "PIL": "Pillow",
}
TRAIN_CONFIG = "projects/GALW/configs/alignps/roi_alignps_R50_cuhk_galw.yaml"
TINY_TRAIN_CONFIG = "projects/GALW/configs/alignps/roi_alignps_R18_synth_galw.yaml"


# ------------------------------------------------------------------ environment
def missing_modules(names=REQUIREMENTS):
    return [m for m in names if importlib.util.find_spec(m) is None]


def find_detectron2_source(explicit, wheels):
    if explicit:
        return explicit
    for folder in (wheels, os.path.join(REPO, "..", "shared", "wheels"), os.path.join(REPO, "shared", "wheels")):
        found = sorted(glob.glob(os.path.join(folder, "detectron2-*.tar.gz")))
        if found:
            return found[0]
    return None


def unpack_detectron2(tarball, dest):
    """The source tree's root (holding the ``detectron2`` package), unpacked once into ``dest``."""
    with tarfile.open(tarball) as tar:
        top = tar.getnames()[0].split("/")[0]
        root = os.path.join(dest, top)
        if not os.path.isdir(os.path.join(root, "detectron2")):
            tar.extractall(dest, filter="data")
    if not os.path.isfile(os.path.join(root, "detectron2", "__init__.py")):
        raise FileNotFoundError(f"{tarball}: no detectron2/__init__.py under {top}/")
    return root


def prepare_environment(args):
    """The environment for the check's subprocesses; installs what is missing (see the docstring)."""
    env = dict(os.environ)
    paths = [os.path.join(REPO, "projects", "GALW"), REPO]
    missing = missing_modules()
    if missing:
        if not os.path.isdir(args.wheels):
            raise SystemExit(
                f"gpu-check: missing Python packages {missing} and no wheel folder {args.wheels}: "
                "run `make gpu-wheels` where a package registry is reachable and bring .gpu-wheels along"
            )
        reqs = sorted({REQUIREMENTS[m] for m in missing})
        print(f"[gpu-check] installing {reqs} from {args.wheels}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", args.wheels]
                       + reqs, check=True)
    d2 = "installed"
    if importlib.util.find_spec("detectron2") is None:
        tarball = find_detectron2_source(args.detectron2_source, args.wheels)
        if tarball is None:
            raise SystemExit("gpu-check: detectron2 is not installed and no detectron2-*.tar.gz source was found "
                             "(--detectron2-source, .gpu-wheels, ../shared/wheels)")
        root = unpack_detectron2(tarball, os.path.join(REPO, ".gpu-check"))
        paths.append(root)
        d2 = f"pure Python from {os.path.basename(tarball)}"
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    return env, d2


def run_stage(stage, args, env, timeout):
    """Run a stage of this script in a subprocess; its result dict (or the error)."""
    argv = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--device", args.device,
            "--iters", str(args.iters)] + (["--tiny"] if args.tiny else [])
    return _run(argv, env, timeout)


def _run(argv, env, timeout):
    start = time.perf_counter()
    try:
        out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in out.stdout.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
            result["seconds"] = time.perf_counter() - start
            return result
    tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {"error": f"exit {out.returncode}: {tail[-1] if tail else ''}"}


def run_gpu_tests(env, timeout):
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = out.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "no output"
    if out.returncode not in (0, 5):  # 5: nothing collected
        print(out.stdout[-4000:], flush=True)
    return {"summary": summary, "ok": out.returncode == 0, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------ stages (subprocesses)
def _emit(result):
    print(RESULT + json.dumps(result), flush=True)


def stage_train(args):
    import galw  # noqa: F401  (compat before detectron2)
    import torch
    from detectron2.config import get_cfg
    from detectron2.engine import HookBase

    from galw import add_galw_config
    from galw.config_file import merge_config_file
    from galw_core.hook import GALWHook
    from galw.data.synthetic import generate
    from galw.engine import Trainer, setup_logging

    out = tempfile.mkdtemp(prefix="galw-gpu-check-")
    data_root = os.path.join(out, "datasets")
    generate("prw", os.path.join(data_root, "SynthPS-PRW"), seed=0, size="tiny")
    os.environ["DETECTRON2_DATASETS"] = data_root  # synth_prw_* are registered under it (galw.data.builtin)
    setup_logging(out)
    batch = 2 if args.tiny else 5
    iters = args.iters
    epoch = max(2, iters // 3)
    cfg = get_cfg()
    add_galw_config(cfg)
    merge_config_file(cfg, os.path.join(REPO, TINY_TRAIN_CONFIG if args.tiny else TRAIN_CONFIG))
    cfg.merge_from_list([
        "DATASETS.TRAIN", ("synth_prw_train",), "DATASETS.TEST", (), "TEST.EVAL_PERIOD", 0,
        # No ImageNet weights here: trainable BN, as the scratch configs (roi_alignps_R18_synth_cpu.yaml);
        # a random trunk under FrozenBN's identity statistics overflows float16 gradients at any loss scale.
        "MODEL.PERSON_SEARCH.PRETRAINED", "", "MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", args.device, "OUTPUT_DIR", out,
        "SOLVER.IMS_PER_BATCH", batch, "SOLVER.MAX_ITER", iters, "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.CHECKPOINT_PERIOD", 10**6, "SOLVER.AMP.ENABLED", args.device == "cuda",
        "DATALOADER.NUM_WORKERS", 0 if args.tiny else 4,
        # probing through the run: two epochs of Gamma, then the grouped weighting
        "MODEL.GALW.MODE", "single_run", "MODEL.GALW.PROBE_EPOCHS", 2, "MODEL.GALW.EPOCH_ITERS", epoch,
        "MODEL.GALW.PROBE_PERIOD", max(1, epoch // 4), "MODEL.GALW.NUM_GROUPS", 2 if args.tiny else 4,
    ])
    cuda = args.device == "cuda"
    stamps = []

    class Timing(HookBase):
        def after_step(self):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([Timing()])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    warm = min(5, len(stamps) - 2)
    seconds = stamps[-1] - stamps[warm]
    hook = next(h for h in trainer._hooks if isinstance(h, GALWHook))
    _emit({
        "config": os.path.basename(TINY_TRAIN_CONFIG if args.tiny else TRAIN_CONFIG),
        "iterations": iters, "batch": batch, "amp": cfg.SOLVER.AMP.ENABLED,
        "images_per_s": batch * (len(stamps) - 1 - warm) / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "probes": sum(len(v) for v in hook.gamma_history.values()) // max(1, len(hook.gamma_history)),
        "probes_rejected": hook.probes_rejected, "groups": hook.groups, "phase": hook.phase,
    })
    shutil.rmtree(out, ignore_errors=True)  # the run's data and checkpoint (163 MB at the tiny size)


def stage_inference(args):
    import galw  # noqa: F401
    import torch
    import torchvision
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from galw import add_galw_config
    from galw.config_file import merge_config_file

    width, height = (320, 192) if args.tiny else (1500, 900)
    num, warmup = (1, 1) if args.tiny else (10, 3)
    cuda = args.device == "cuda"
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 255, (3, height, width), generator=g, dtype=torch.uint8) for _ in range(num + warmup)]

    cfg = get_cfg()
    add_galw_config(cfg)
    merge_config_file(cfg, os.path.join(REPO, TINY_TRAIN_CONFIG if args.tiny else TRAIN_CONFIG))
    cfg.merge_from_list([
        "MODEL.PERSON_SEARCH.PRETRAINED", "", "DATASETS.TRAIN", (), "MODEL.DEVICE", args.device,
        "MODEL.OIM.NUM_LABELED", 1, "MODEL.GALW.ENABLED", False,
        "INPUT.PS.TEST_LONG_SIDE", width, "INPUT.PS.TEST_SHORT_SIDE", height,
        # random weights score every location near the prior: keep the full top-k, as a trained model at most
        "MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.0,
    ])
    person_search = build_model(cfg).eval()
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=height, max_size=width).to(args.device).eval()
    models = {
        "roi_alignps": lambda im: person_search([{"image": im, "height": height, "width": width}]),
        "torchvision": lambda im: tv([im.float().div_(255)]),
    }
    result = {"size": f"{width}x{height}", "images": num}
    # AMP inference on CUDA only: torchvision's CPU deformable conv (AFA) has no bfloat16 kernel.
    with torch.inference_mode():
        for name, model in models.items():
            for amp in (False, True) if cuda else (False,):
                times = []
                for i, image in enumerate(images):
                    image = image.to(args.device)
                    if cuda:
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    with torch.autocast(args.device, dtype=amp_dtype, enabled=amp):
                        model(image)
                    if cuda:
                        torch.cuda.synchronize()
                    if i >= warmup:
                        times.append((time.perf_counter() - start) * 1000)
                result[f"{name}_{'amp' if amp else 'fp32'}_ms"] = sorted(times)[len(times) // 2]
    _emit(result)


# ------------------------------------------------------------------ report
def table(header, results):
    rows = [("check", "result")]
    tests = results.get("gpu tests", {})
    rows.append(("tests marked gpu", tests.get("error") or tests.get("summary", "")))
    tr = results.get("train", {})
    if "error" in tr:
        rows.append(("training", tr["error"]))
    else:
        peak = f"{tr['peak_gib']:.1f} GiB peak" if tr.get("peak_gib") is not None else "peak memory n/a (CPU)"
        rows.append((
            f"train {tr['config']} ({'AMP' if tr['amp'] else 'fp32'}, batch {tr['batch']}, {tr['iterations']} it)",
            f"{tr['images_per_s']:.2f} images/s, {peak}; GALW: {tr['probes']} probes/task recorded, "
            f"{tr['probes_rejected']} rejected, phase {tr['phase']}, {len(tr['groups'] or [])} groups",
        ))
    inf = results.get("inference", {})
    if "error" in inf:
        rows.append(("inference", inf["error"]))
    else:
        for name, label in (("roi_alignps", "ROI-AlignPS* (paper: 69 ms, TITAN RTX)"),
                            ("torchvision", "torchvision fasterrcnn_resnet50_fpn")):
            amp = inf.get(f"{name}_amp_ms")
            amp = f"AMP {amp:.1f} ms/image" if amp is not None else "AMP n/a (CPU)"
            rows.append((f"inference {inf['size']} {label}", f"fp32 {inf[f'{name}_fp32_ms']:.1f} ms/image, {amp}"))
        ratio = inf["roi_alignps_fp32_ms"] / inf["torchvision_fp32_ms"]
        rows.append(("inference ratio ROI-AlignPS* / torchvision (fp32)", f"{ratio:.2f}"))
    rows.append(("wall time", f"{results['wall_s']:.0f} s"))
    width = max(len(r[0]) for r in rows)
    lines = [header, ""] + [f"| {a:<{width}} | {b} |" for a, b in rows]
    lines.insert(3, f"|{'-' * (width + 2)}|---|")
    return "\n".join(lines)


def save_result(results, header, env, device):
    """``results/benchmarks/gpu_check.json`` through galw.results, in the prepared environment
    (this process may lack detectron2)."""
    code = ("import json, sys; from galw.results import write_result; "
            "print(write_result('benchmarks', 'gpu_check', json.load(sys.stdin), command='make gpu-check', "
            f"device={device!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True, capture_output=True,
                         input=json.dumps(dict(results, header=header)))
    print(f"result file: {out.stdout.strip()}" if out.returncode == 0 else out.stderr[-2000:], flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy scale, to test this script on CPU")
    parser.add_argument("--iters", type=int, default=None,
                        help="training iterations (default 40; tiny 6: both probing epochs, then grouped steps)")
    parser.add_argument("--wheels", default=os.path.join(REPO, ".gpu-wheels"))
    parser.add_argument("--detectron2-source", default="")
    parser.add_argument("--stage", choices=["train", "inference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters is None:
        args.iters = 6 if args.tiny else 40
    if args.stage:
        {"train": stage_train, "inference": stage_inference}[args.stage](args)
        return 0
    start = time.perf_counter()
    env, d2 = prepare_environment(args)
    probe = subprocess.run([sys.executable, "-c", "import galw, torch, detectron2, galw_core.compat as c; "
                            "print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() "
                            "else 'no GPU', c.has_compiled_ops())"], cwd=REPO, env=env, capture_output=True, text=True)
    if probe.returncode:
        print(probe.stderr[-3000:])
        raise SystemExit("gpu-check: the project does not import in this environment (above)")
    words = probe.stdout.split()
    torch_version, device_name, compiled = words[0], " ".join(words[1:-1]), words[-1]
    if args.device == "cuda" and device_name == "no GPU":
        raise SystemExit("gpu-check: torch sees no CUDA device (use --device cpu --tiny to test the script)")
    # Limits that keep the GPU check inside a 10-minute device call; none at toy scale (a busy CPU is slow to import).
    limits = (None, None, None) if args.tiny else (150, 240, 150)
    results = {"gpu tests": run_gpu_tests(env, timeout=limits[0])}
    results["train"] = run_stage("train", args, env, timeout=limits[1])
    results["inference"] = run_stage("inference", args, env, timeout=limits[2])
    results["wall_s"] = time.perf_counter() - start
    header = (f"GALW-PS GPU check: {device_name}; Python {sys.version.split()[0]}, torch {torch_version}, "
              f"detectron2 {d2} (compiled ops: {compiled})")
    print(table(header, results), flush=True)
    if not args.tiny:  # a toy-scale run tests the script; it measures nothing
        save_result(results, header, env, args.device)
    failed = [k for k, v in results.items() if isinstance(v, dict) and ("error" in v or v.get("ok") is False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
