"""GALW end to end on the synthetic benchmark, on CPU (``make demo``, ``tools/demo.py``).

``config``: the demo's config and the config.yaml beside its weights; ``dataset``: SynthPS-PRW
written once per size and seed; ``pipeline``: the five stages; ``summary``: the report's summary
and the headline result file; ``progress``: numbered stages with the elapsed time.
"""
from .config import CONFIG_FILENAME, DEFAULT_CONFIG, DEMO_OWNED_KEYS, PREFIX, build_cfg, save_config
from .dataset import STAMP, prepare_dataset, register_demo_dataset
from .pipeline import NUM_STAGES, evaluate_baseline, evaluate_untrained, run_demo, train_galw
from .progress import Progress
from .summary import (ROW_BASELINE, ROW_TRAINED, ROW_UNTRAINED, demo_command, headline, result_data,
                      verdict, write_demo_result, write_summary)

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_CONFIG",
    "DEMO_OWNED_KEYS",
    "NUM_STAGES",
    "PREFIX",
    "Progress",
    "ROW_BASELINE",
    "ROW_TRAINED",
    "ROW_UNTRAINED",
    "STAMP",
    "build_cfg",
    "demo_command",
    "evaluate_baseline",
    "evaluate_untrained",
    "headline",
    "prepare_dataset",
    "register_demo_dataset",
    "result_data",
    "run_demo",
    "save_config",
    "train_galw",
    "verdict",
    "write_demo_result",
    "write_summary",
]
