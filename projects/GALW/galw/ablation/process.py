"""How the ablation runner trains a run: one ``train_net.py`` subprocess with its own threads and
datasets root, and the thread count a result records beside its wall time."""
import os
import subprocess

from .spec import REPO_ROOT

__all__ = ["run_threads", "subprocess_runner"]


def subprocess_runner(cmd, out_dir, threads=None, datasets_root=None):
    """Run one training; its output goes to ``OUT_DIR/ablation_log.txt``. Returns the exit code.

    ``threads``: OMP/MKL thread count of the run (parallel CPU runs share the cores);
    ``datasets_root``: its DETECTRON2_DATASETS (the study's dataset, data.py).
    """
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if datasets_root:
        env["DETECTRON2_DATASETS"] = datasets_root
    with open(os.path.join(out_dir, "ablation_log.txt"), "a") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)


def run_threads(runner):
    """The OpenMP/MKL threads a run of ``runner`` trains with: subprocess_runner's ``threads`` where
    ``runner`` sets them (functools.partial, as tools/ablation.py builds it), else this process's, which
    the run inherits. A result records it beside its ``seconds``: the file's meta is the runner's."""
    threads = getattr(runner, "keywords", {}).get("threads")
    if threads:
        return int(threads)
    import torch

    return torch.get_num_threads()
