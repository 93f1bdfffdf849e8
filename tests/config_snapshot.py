"""Every detectron2 config under projects/GALW/configs, resolved to a flat key -> value map.

``python tests/config_snapshot.py`` rewrites tests/configs_resolved.json: the resolved defaults
(get_cfg() + add_galw_config) once, the keys the project adds, and for each config the keys
whose resolved value differs from the defaults. tests/test_config_snapshot.py checks that every
config still resolves to exactly that, so a config can be thinned or moved without changing
what any run trains. Rewrite the file only when a value changes on purpose, and say which in the
commit.
"""
import glob
import json
import os

from conftest import CONFIG_DIR, TESTS_DIR  # this checkout's package first on sys.path

SNAPSHOT = os.path.join(TESTS_DIR, "configs_resolved.json")


def config_files():
    """Config paths relative to CONFIG_DIR, sorted."""
    paths = glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
    return sorted(os.path.relpath(p, CONFIG_DIR) for p in paths)


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve(rel=None):
    """get_cfg() + add_galw_config (+ merge_from_file(rel)), flat, as JSON values (tuples -> lists)."""
    import galw
    from detectron2.config import get_cfg

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    if rel is not None:
        cfg.merge_from_file(os.path.join(CONFIG_DIR, rel))
    return json.loads(json.dumps(_flatten(cfg)))


def project_keys():
    """The keys add_galw_config adds (detectron2's own defaults differ between its builds)."""
    from detectron2.config import get_cfg

    return sorted(set(resolve()) - set(json.loads(json.dumps(_flatten(get_cfg())))))


def snapshot():
    defaults = resolve()
    configs = {}
    for rel in config_files():
        values = resolve(rel)
        configs[rel] = {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}
    return {"defaults": defaults, "project_keys": project_keys(), "configs": configs}


if __name__ == "__main__":
    with open(SNAPSHOT, "w") as f:
        json.dump(snapshot(), f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {SNAPSHOT}")
