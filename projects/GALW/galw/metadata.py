"""``current_metadata``: a registered dataset's metadata, file-derived fields included.

Its own module because both the data loaders and the models read it (a model sizes its identity
lookup table from ``num_pids`` at build), and models must not depend on the data package.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["current_metadata"]


def current_metadata(name):
    """The metadata of a registered dataset after loading it.

    File-derived fields (``num_pids``, ``attribute_names``, ...) are set when a split is loaded,
    and may describe another root ($DETECTRON2_DATASETS) after an earlier load; models are built
    before their loader, so they read these fields through here. Loading replaces the Metadata
    object, hence the fresh lookup. Parses are cached, so a second load is cheap.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.get(name)
    return MetadataCatalog.get(name)
