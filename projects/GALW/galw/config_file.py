"""Reading a config file: plain YAML only, so that a config runs no code.

detectron2's ``CfgNode.merge_from_file`` defaults to ``allow_unsafe=True``: a file that plain YAML
rejects is read again with ``yaml.unsafe_load``, where ``!!python/object/apply:os.system [...]``
runs a command (detectron2/config/config.py, ``merge_from_file``; fvcore/common/config.py,
``load_yaml_with_base``). Every config this project reads goes through :func:`merge_config_file`,
which refuses such a file, ``_BASE_`` files included, instead.
"""
import yaml
from detectron2.config import get_cfg

from .config import add_galw_config, sync_test_size

__all__ = ["load_config", "merge_config_file"]


def merge_config_file(cfg, path):
    """``cfg.merge_from_file(path)`` with safe YAML for ``path`` and every ``_BASE_`` it names.

    Raises ValueError naming the file that holds a Python tag (a ``_BASE_`` one included).
    """
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark or e.context_mark
        where = getattr(mark, "name", None) or path
        line = f", line {mark.line + 1}" if mark is not None else ""
        via = "" if where == path else f" (a _BASE_ of {path})"
        raise ValueError(
            f"{where}{line}{via}: refusing to load a config that builds Python objects ({e.problem}); a config "
            "may hold only plain YAML (numbers, strings, lists, mappings). Remove the tag, or use a config "
            "from a source you trust"
        ) from None
    return cfg


def load_config(path, opts=()):
    """detectron2's defaults + this project's keys + ``path`` (safe YAML) + ``opts`` (KEY VALUE ...),
    INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST set to the person-search test size (:func:`galw.config.sync_test_size`,
    so the config.yaml a run saves gives DefaultPredictor that size). The config is returned unfrozen."""
    cfg = get_cfg()
    add_galw_config(cfg)
    merge_config_file(cfg, path)
    cfg.merge_from_list(list(opts))
    return sync_test_size(cfg, opts)
