"""sigma and loss weights per group (1/sigma^2) and per task over iterations."""
from .figures import color_of, new_figure, save_figure
from .run_files import scalar_series


def plot_sigma_and_weights(records, out_path, source="metrics.json"):
    """Curves of ``galw/sigma/<group>``, ``galw/group_weight/<group>`` and ``galw/weight/<task>``.

    Group weights (1/sigma^2) are drawn beside sigma, the weight each task's loss gets in a
    third panel. Returns {"sigma": series, "group_weight": series, "weight": series (per task)}.
    """
    sigma = scalar_series(records, "galw/sigma/")
    group_weights = scalar_series(records, "galw/group_weight/")
    task_weights = scalar_series(records, "galw/weight/")
    if not sigma:
        raise ValueError(f"{source}: no 'galw/sigma/<group>' scalars (was adaptive weighting on?)")
    panels = [("sigma per group", sigma), ("weight per group (1/sigma^2)", group_weights)]
    if task_weights:
        panels.append(("weight per task", task_weights))
    fig = new_figure(5.5 * len(panels), 4)
    for p, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for i, (name, (xs, ys)) in enumerate(sorted(series.items())):
            ax.plot(xs, ys, color=color_of(i), label=name)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    save_figure(fig, out_path)
    return {"sigma": sigma, "group_weight": group_weights, "weight": task_weights}
