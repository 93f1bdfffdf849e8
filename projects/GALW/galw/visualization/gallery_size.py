"""CUHK-SYSU search mAP against gallery size, one curve per run (the paper's Fig. 4)."""
import numpy as np

from .figures import color_of, new_figure, save_figure
from .run_files import GALLERY_SIZES


def plot_gallery_size_curve(runs, out_path, metric="mAP"):
    """``runs``: [(label, [(gallery size, value), ...])]. Returns {label: points drawn}."""
    if not runs:
        raise ValueError("plot_gallery_size_curve: no runs given")
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"plot_gallery_size_curve: labels must be distinct, got {labels}")
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = {}
    for i, (label, points) in enumerate(runs):
        points = sorted((int(n), float(v)) for n, v in points)
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", color=color_of(i), label=label)
        drawn[label] = points
    ax.set_xscale("log")
    ticks = sorted({n for pts in drawn.values() for n, _ in pts} | set(GALLERY_SIZES))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("gallery size")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"CUHK-SYSU {metric} vs gallery size")
    values = np.array([v for pts in drawn.values() for _, v in pts])
    ax.set_ylim(max(0.0, values.min() - 5), min(100.0, values.max() + 5))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_path)
    return drawn
