"""sigma and loss weights per group (and per task, 1/(k sigma^2)) over iterations."""
from .figures import color_of, new_figure, save_figure
from .run_files import scalar_series


def plot_sigma_and_weights(records, out_path, source="metrics.json"):
    """Curves of ``galw/sigma/<group>`` and ``galw/weight/<name>`` from metrics.json records.

    Group weights are drawn beside sigma; per-task weights (names that are not sigma
    groups) get their own panel. Returns {"sigma": series, "weight": series}.
    """
    sigma = scalar_series(records, "galw/sigma/")
    weight = scalar_series(records, "galw/weight/")
    if not sigma:
        raise ValueError(f"{source}: no 'galw/sigma/<group>' scalars (was adaptive weighting on?)")
    task_weights = {k: v for k, v in weight.items() if k not in sigma}
    group_weights = {k: v for k, v in weight.items() if k in sigma}
    panels = [("sigma per group", sigma), ("weight per group", group_weights)]
    if task_weights:
        panels.append(("effective weight per task", task_weights))
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
    return {"sigma": sigma, "weight": weight}
