"""Variants with ``groups_from``: the groups of another run's first GALW training, clustered again.

Algorithm 1's first training is shared by the G = 2..6 variants of one seed, as in the paper's
Table 4: its recorded Gamma history is clustered into each variant's number of groups.
"""
import json
import os

from galw_core.files import atomic_write

__all__ = ["GROUPS_INPUT", "galw_group_tasks", "regroup_from_run"]

#: The regrouped groups a run trains with (galw_groups.json format), in its own folder.
GROUPS_INPUT = "galw_groups_input.json"


def galw_group_tasks(history, num_groups, linkage):
    """GALW's clustering of Gamma histories (galw_core.grouping.group_tasks, docs/galw.md)."""
    from galw_core.grouping import group_tasks

    return group_tasks(history, num_groups, linkage=linkage)


def _group_sets(groups):
    return sorted(sorted(g) for g in groups)


def regroup_from_run(src, out_dir, group_tasks=galw_group_tasks, recorded=None):
    """Groups for G = ``src["num_groups"]`` from the Gamma history in ``src["groups_file"]``.

    ``recorded``: (groups, seed) of the source's kept result; the file's groups must be those (else
    ValueError naming both), so no regrouped run starts from another probe than the source trained
    from (a phase one run again, or a file left by another training). Writes
    ``OUT_DIR/galw_groups_input.json`` and returns the config overrides that train with those groups
    from the source run's initial weights.
    """
    if not os.path.isfile(src["groups_file"]):
        raise FileNotFoundError(f"groups_from: {src['groups_file']} not found (did {src['variant']} finish?)")
    with open(src["groups_file"]) as f:
        probe = json.load(f)
    if not isinstance(probe, dict) or not isinstance(probe.get("groups"), list):
        raise ValueError(f"{src['groups_file']}: expected a JSON object with a list 'groups', got {probe!r:.200}")
    for key in ("gamma_history", "linkage"):
        if key not in probe:
            raise ValueError(f"{src['groups_file']}: missing field {key!r}")
    if recorded is not None:
        groups, seed = recorded
        if groups is None or _group_sets(probe["groups"]) != _group_sets(groups):
            raise ValueError(f"{src['groups_file']}: its phase one found the groups {probe['groups']}, while the "
                             f"result of {src['variant']} seed {seed} records {groups}; no regrouped run trains "
                             f"from another probe (remove {os.path.dirname(src['groups_file'])} to run it again)")
    regrouped = dict(probe, groups=group_tasks(probe["gamma_history"], src["num_groups"], probe["linkage"]),
                     num_groups=src["num_groups"], source=src["groups_file"])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, GROUPS_INPUT)
    text = json.dumps(regrouped, indent=2)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    opts = ["MODEL.GALW.GROUPS_FILE", path]
    if src["init_weights"]:
        if not os.path.isfile(src["init_weights"]):
            raise FileNotFoundError(f"groups_from: initial weights {src['init_weights']} not found")
        opts += ["MODEL.WEIGHTS", src["init_weights"]]
    return opts
