"""Per-task gradient magnitude Gamma over training (the paper's Fig. 3)."""
from matplotlib.ticker import MaxNLocator

from .figures import color_of, new_figure, save_figure


def gamma_series_from_groups(groups_data):
    """{task: ([epoch 1..E], [Gamma])} from galw_groups.json's gamma_history."""
    return {
        task: (list(range(1, len(hist) + 1)), [float(v) for v in hist])
        for task, hist in sorted(groups_data["gamma_history"].items())
    }


def plot_gradient_magnitudes(series, out_path, xlabel="epoch", title="Gradient magnitude per task"):
    """One Gamma curve per task; ``series`` is {task: (xs, ys)}. Returns what was drawn.

    Magnitudes differ by orders between tasks (the paper zooms into the lower part), so a
    second panel shows the same curves on a log scale.
    """
    if not series:
        raise ValueError("plot_gradient_magnitudes: no task series to plot")
    for task, (xs, ys) in series.items():
        if len(xs) != len(ys) or not ys:
            raise ValueError(f"plot_gradient_magnitudes: task {task!r} has {len(xs)} x and {len(ys)} y values")
    positive = all(v > 0 for _, ys in series.values() for v in ys)
    fig = new_figure(13 if positive else 7, 4.5)
    for p, scale in enumerate(("linear", "log") if positive else ("linear",)):
        ax = fig.add_subplot(1, 2 if positive else 1, p + 1)
        for i, (task, (xs, ys)) in enumerate(sorted(series.items())):
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, ms=3, color=color_of(i), label=task)
        ax.set_yscale(scale)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(r"$\Gamma$ (mean shared-parameter gradient norm)")
        ax.set_title(f"{title} ({scale} scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    save_figure(fig, out_path)
    return {task: (list(xs), list(ys)) for task, (xs, ys) in series.items()}
