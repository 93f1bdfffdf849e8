"""Similarity of a query to its true matches vs to everyone else, one panel per model.

Collapsed embeddings show as both distributions piled up near 1; a working re-id model
separates them. Input: the ``similarity_histogram`` of a search JSON (PersonSearchEvaluator).
"""
import numpy as np

from .figures import color_of, new_figure, save_figure

EMPTY_PANEL = "no similarities: no detection reached the search threshold"


def _density(counts, widths):
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / (total * widths) if total else counts


def plot_similarity_histograms(histograms, out_path):
    """Draw ``{model name: similarity_histogram dict}`` as side-by-side panels of densities
    (true matches vs other detections of the query's gallery), each with both means.

    Returns ``{model name: (mean_positive, mean_negative)}`` as drawn.
    """
    if not histograms:
        raise ValueError("plot_similarity_histograms: no histograms to draw")
    fig = new_figure(4.2 * len(histograms), 3.4)
    drawn = {}
    for i, (name, h) in enumerate(histograms.items()):
        edges = np.asarray(h["bin_edges"], dtype=np.float64)
        if len(edges) != len(h["positive"]) + 1 or len(h["negative"]) != len(h["positive"]):
            raise ValueError(f"similarity histogram of {name!r}: {len(edges)} bin edges for "
                             f"{len(h['positive'])} positive and {len(h['negative'])} negative counts")
        widths = np.diff(edges)
        ax = fig.add_subplot(1, len(histograms), i + 1)
        for j, (key, label) in enumerate((("negative", "other people / detections"), ("positive", "true match"))):
            ax.stairs(_density(h[key], widths), edges, fill=True, alpha=0.45, color=color_of(3 - j), label=label)
            mean = h.get(f"mean_{key}")
            if mean is not None:
                ax.axvline(mean, color=color_of(3 - j), linestyle="--", linewidth=1)
        drawn[name] = (h.get("mean_positive"), h.get("mean_negative"))
        pos, neg = drawn[name]
        means = "" if pos is None or neg is None else f"\nmean {pos:.3f} (match) vs {neg:.3f} (other)"
        if not (np.sum(h["positive"]) or np.sum(h["negative"])):
            means = f"\n{EMPTY_PANEL}"  # an untrained model: say why the panel is empty
        ax.set_title(f"{name}{means}", fontsize=9)
        ax.set_xlabel("cosine similarity to the query")
        ax.set_ylabel("density")
        ax.set_xlim(edges[0], edges[-1])
        ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, out_path)
    return drawn
