"""The s* values of the tasks, their hierarchical clustering and the chosen groups."""
import numpy as np
from scipy.cluster.hierarchy import dendrogram, fcluster, linkage

from .figures import color_of, new_figure, save_figure

_LINKAGE_METHODS = ("single", "complete", "average", "weighted", "centroid", "median", "ward")
_MIXED_COLOR = "#555555"


def plot_s_star_dendrogram(groups_data, out_path, source="galw_groups.json"):
    """Bar chart of s* per task and the scipy dendrogram of s*, both coloured by group.

    The dendrogram is recomputed with scipy's ``linkage`` on the s* values using the
    method named in the JSON; leaves and the links under one group take that group's
    colour (links joining different groups are grey). The colours come from the groups
    the run chose, so a mismatch with the tree shows in the picture; a dashed line marks
    the cut of the tree into G clusters.
    Returns {"leaves": leaf order, "leaf_colors": {task: colour}, "task_group": {task: g},
    "link_colors": the colour of each drawn link, "matches_tree_cut": whether the chosen
    groups equal scipy's ``fcluster(.., G, "maxclust")`` partition}.
    """
    method = groups_data["linkage"]
    if method not in _LINKAGE_METHODS:
        raise ValueError(f"{source}: field 'linkage' is {method!r}; expected one of {_LINKAGE_METHODS}")
    groups = groups_data["groups"]
    task_group = {t: g for g, members in enumerate(groups) for t in members}
    tasks = [t for members in groups for t in members]
    if len(tasks) < 2:
        raise ValueError(f"{source}: a dendrogram needs at least 2 tasks, got {tasks}")
    values = np.array([float(groups_data["s_star"][t]) for t in tasks]).reshape(-1, 1)
    Z = linkage(values, method=method)

    leaves_of = {i: {i} for i in range(len(tasks))}
    for k, (a, b, _, _) in enumerate(Z):
        leaves_of[len(tasks) + k] = leaves_of[int(a)] | leaves_of[int(b)]

    def link_color(node):
        gs = {task_group[tasks[i]] for i in leaves_of[node]}
        return color_of(gs.pop()) if len(gs) == 1 else _MIXED_COLOR

    fig = new_figure(12, 4.5)
    ax_bar = fig.add_subplot(1, 2, 1)
    xs = np.arange(len(tasks))
    ax_bar.bar(xs, values[:, 0], color=[color_of(task_group[t]) for t in tasks])
    ax_bar.set_xticks(xs)
    ax_bar.set_xticklabels(tasks, rotation=60, ha="right", fontsize=8)
    ax_bar.axhline(0, color="black", lw=0.5)
    ax_bar.set_ylabel("s* = sign(s) sigmoid(log|s|)")
    ax_bar.set_title(f"s* per task, {len(groups)} groups")

    ax_tree = fig.add_subplot(1, 2, 2)
    tree = dendrogram(Z, labels=tasks, ax=ax_tree, link_color_func=link_color, leaf_rotation=60)
    leaf_colors = {}
    for label in ax_tree.get_xticklabels():
        color = color_of(task_group[label.get_text()])
        label.set_color(color)
        label.set_fontsize(8)
        leaf_colors[label.get_text()] = color
    num_groups = len(groups)
    if 1 < num_groups < len(tasks):
        cut = (Z[len(tasks) - num_groups - 1, 2] + Z[len(tasks) - num_groups, 2]) / 2
        ax_tree.axhline(cut, color="black", ls="--", lw=0.8, label=f"cut into {num_groups} clusters")
        ax_tree.legend(fontsize=7)
    labels = fcluster(Z, t=num_groups, criterion="maxclust")
    tree_partition = {frozenset(t for t, c in zip(tasks, labels) if c == k) for k in set(labels)}
    matches = tree_partition == {frozenset(members) for members in groups}
    ax_tree.set_ylabel(f"{method} linkage distance")
    ax_tree.set_title("Hierarchical clustering of s*")
    save_figure(fig, out_path)
    return {
        "leaves": list(tree["ivl"]),
        "leaf_colors": leaf_colors,
        "task_group": task_group,
        "link_colors": list(tree["color_list"]),
        "matches_tree_cut": matches,
    }
