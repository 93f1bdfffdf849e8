"""The demo's config: the synthetic-benchmark GALW config, the demo's datasets and folders, and the
``config.yaml`` it leaves beside the weights (as detectron2's ``default_setup`` does for train_net.py)."""
import os

from detectron2.config import get_cfg

from galw.config import add_galw_config, sync_test_size
from galw.config_file import merge_config_file
from galw_core.files import atomic_write

__all__ = ["CONFIG_FILENAME", "DEFAULT_CONFIG", "DEMO_OWNED_KEYS", "PREFIX", "REPO_ROOT", "build_cfg", "save_config"]

#: The repository root (projects/GALW/galw/demo/config.py -> <repo>).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "projects", "GALW", "configs", "alignps", "roi_alignps_R18_synth_galw.yaml")
#: Dataset names the demo registers for its root (whatever $DETECTRON2_DATASETS says).
PREFIX = "demo_synth_prw"
#: Config keys the demo sets itself (its dataset and run folders): an override of one is an error.
DEMO_OWNED_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "OUTPUT_DIR")
#: The full config in a run's folder (the name detectron2's default_setup writes).
CONFIG_FILENAME = "config.yaml"


def build_cfg(config_file, output_dir, seed, opts):
    """The demo's config: ``seed`` as the training seed unless ``opts`` set SEED (overrides come last)."""
    owned = [k for k in list(opts)[::2] if k in DEMO_OWNED_KEYS]
    if owned:
        raise ValueError(f"tools/demo.py sets {', '.join(owned)} itself (its dataset and --out); "
                         "remove the override, or run train_net.py for another dataset or folder.")
    cfg = get_cfg()
    add_galw_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.SEED = seed
    cfg.merge_from_list(list(opts))
    cfg.DATASETS.TRAIN = (f"{PREFIX}_train",)
    cfg.DATASETS.TEST = (f"{PREFIX}_gallery",)
    cfg.OUTPUT_DIR = output_dir
    sync_test_size(cfg, opts)  # the saved config.yaml gives DefaultPredictor the test size
    cfg.freeze()
    return cfg


def save_config(cfg):
    """Write ``cfg.dump()`` to ``OUTPUT_DIR/config.yaml`` (complete or absent); returns its path.

    ``get_cfg()`` + ``add_galw_config`` + ``merge_from_file`` of it gives ``cfg`` back, so the
    weights beside it can be evaluated or trained further with ``train_net.py --config-file``.
    """
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    path = os.path.join(cfg.OUTPUT_DIR, CONFIG_FILENAME)
    text = cfg.dump()
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path
