"""Matplotlib figure plumbing shared by the plots: Agg canvases, no pyplot state."""
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Colours for groups / curves (matplotlib's tab10, as hex so tests can compare them).
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def new_figure(width, height):
    """A Figure on an Agg canvas, independent of any pyplot backend the caller set."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_path):
    """Write the figure as an image (format from the extension), creating folders."""
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(out_path, bbox_inches="tight")
    return out_path


def color_of(index):
    return PALETTE[index % len(PALETTE)]
