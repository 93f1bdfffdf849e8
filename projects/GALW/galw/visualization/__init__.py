"""Figures of a GALW-PS run: gradient magnitudes, grouping, loss weights, search results.

All drawing uses matplotlib's Agg canvas directly, so it works headless and leaves
any pyplot backend of the caller alone.
"""
from .gallery_size import plot_gallery_size_curve
from .gradients import gamma_series_from_groups, plot_gradient_magnitudes
from .dendrogram import plot_s_star_dendrogram
from .report import write_report
from .run_files import (
    gallery_size_metrics,
    load_groups_json,
    load_metrics_records,
    load_search_json,
    scalar_series,
)
from .search_results import plot_search_results
from .similarity import plot_similarity_histograms
from .weights import plot_sigma_and_weights

__all__ = [
    "gallery_size_metrics",
    "gamma_series_from_groups",
    "load_groups_json",
    "load_metrics_records",
    "load_search_json",
    "plot_gallery_size_curve",
    "plot_gradient_magnitudes",
    "plot_s_star_dendrogram",
    "plot_search_results",
    "plot_sigma_and_weights",
    "plot_similarity_histograms",
    "scalar_series",
    "write_report",
]
