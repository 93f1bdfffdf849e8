"""The study's figures: per-variant mean with its seed spread, and the learning curves of the references.

Matplotlib's Agg backend (files only, no display), set on the figure itself so importing this
module changes no global backend.
"""
import numpy as np

from .statistics import mean_std

__all__ = ["CURVE_VARIANTS", "curve_band", "plot_learning_curves", "plot_variant_means"]

#: The variants whose learning curves share one axes: the plain sum, the searched static weighting, GALW.
CURVE_VARIANTS = ("equal", "tuned_static", "galw_g4")


def _figure(**kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def plot_variant_means(rows, path, key="mAP"):
    """Bar per variant: mean of ``key`` over its seeds, error bar = sample std, dots = the seeds."""
    rows = [r for r in rows if key in r]
    if not rows:
        raise ValueError(f"plot_variant_means: no variant has {key!r} values")
    fig = _figure(figsize=(max(4.0, 0.7 * len(rows) + 1.5), 3.6), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    means = [r[f"{key}_mean"] for r in rows]
    stds = [r[f"{key}_std"] or 0.0 for r in rows]
    ax.bar(x, means, yerr=stds, capsize=3, color="#9ecae1", edgecolor="#3182bd")
    for i, r in enumerate(rows):
        ax.plot([i] * len(r[key]), r[key], "k.", ms=4)
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"{key}: mean ± std over seeds (dots: seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def curve_band(results, name, key="mAP"):
    """(iterations, mean, std, n) of ``name``'s curves over its seeds, at the iterations every seed evaluated."""
    curves = [{p["iteration"]: p[key] for p in r.get("curve", []) if p.get(key) is not None}
              for r in results if r["name"] == name]
    curves = [c for c in curves if c]
    if not curves:
        return None
    its = sorted(set.intersection(*(set(c) for c in curves)))
    if not its:
        return None
    stats = [mean_std([c[i] for c in curves]) for i in its]
    return (np.asarray(its), np.asarray([m for m, _ in stats]), np.asarray([s or 0.0 for _, s in stats]), len(curves))


def plot_learning_curves(results, path, names=CURVE_VARIANTS, key="mAP"):
    """``key`` against iteration for ``names`` on one axes: mean over seeds, band = ± sample std.

    Returns the names drawn (those with a curve); raises when none has one.
    """
    fig = _figure(figsize=(5.5, 3.6), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    drawn = []
    for name in names:
        band = curve_band(results, name, key)
        if band is None:
            continue
        its, mean, std, n = band
        (line,) = ax.plot(its, mean, marker=".", label=f"{name} (n={n})")
        ax.fill_between(its, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn.append(name)
    if not drawn:
        raise ValueError(f"plot_learning_curves: none of {list(names)} has a curve")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"{key} during training: mean over seeds, band ± std", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return drawn
