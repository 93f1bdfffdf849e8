"""Registration of the person-search datasets under ``$DETECTRON2_DATASETS`` (default ``datasets``).

The root is resolved when a dataset is loaded (not at import), so setting the environment variable
after ``import galw`` works. Metadata that depends on the files (``num_pids``, ``pid_mapping``,
``gallery_protocols``, ``attribute_names``) is (re)set by every load of the split.
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..metadata import current_metadata
from .attributes import attach_attributes
from .cuhk_sysu import CUHKSYSU
from .id_val import SUFFIX, register_id_val
from .prw import PRW

logger = logging.getLogger(__name__)

__all__ = ["register_person_search", "current_metadata", "datasets_root", "ATTRIBUTE_FILE", "ATTRIBUTE_IOU_THRESHOLD"]

ATTRIBUTE_FILE = "attributes.json"
# A record box takes the attributes of the file box it overlaps with at least this IoU.
ATTRIBUTE_IOU_THRESHOLD = 0.9
SPLITS = ("train", "gallery", "query")

# name prefix -> (layout kind, directory under $DETECTRON2_DATASETS)
BUILTIN = {
    "cuhk_sysu": ("cuhk_sysu", "CUHK-SYSU"),
    "prw": ("prw", "PRW"),
    "synth_cuhk": ("cuhk_sysu", "SynthPS-CUHK"),
    "synth_prw": ("prw", "SynthPS-PRW"),
}


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


#: Metadata fields a load derives from the dataset's files; a load sets them all anew.
FILE_DERIVED_FIELDS = ("num_pids", "pid_mapping", "gallery_protocols", "attribute_names")


def _set_file_metadata(name, **fields):
    """Replace all file-derived metadata of ``name`` by ``fields``: an earlier load's values
    (of another root, perhaps) never survive, e.g. attribute_names when the new root has none."""
    meta = MetadataCatalog.get(name)
    keep = {k: v for k, v in meta.as_dict().items() if k not in FILE_DERIVED_FIELDS and k != "name"}
    MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(**keep, **fields)


def _load(prefix, kind, root_fn, split):
    root = root_fn()
    fields = {}
    if kind == "cuhk_sysu":
        ds = CUHKSYSU(root)
        records, num_pids = ds.records(split)
        if split == "train":
            fields["num_pids"] = num_pids
        if split == "gallery":
            fields["gallery_protocols"] = ds.protocols()
    else:
        ds = PRW(root)
        records, mapping = ds.records(split)
        if split == "train":
            fields.update(num_pids=len(mapping), pid_mapping=mapping)
    attr_path = os.path.join(root, ATTRIBUTE_FILE)
    if split != "query" and os.path.isfile(attr_path):
        fields["attribute_names"] = attach_attributes(records, attr_path, ATTRIBUTE_IOU_THRESHOLD, ds.dropped)
    _set_file_metadata(f"{prefix}_{split}", **fields)
    logger.info("Loaded %d %s records from %s", len(records), f"{prefix}_{split}", root)
    return records


def register_person_search(prefix, kind, root=None, subdir=None):
    """Register ``<prefix>_{train,gallery,query}`` for a root in the real ``kind`` layout.

    ``root`` None means ``$DETECTRON2_DATASETS/<subdir>`` at load time.
    """
    if kind not in ("cuhk_sysu", "prw"):
        raise ValueError(f"Unknown person-search layout {kind!r}; expected 'cuhk_sysu' or 'prw'")
    root_fn = (lambda: root) if root is not None else (lambda: os.path.join(datasets_root(), subdir))
    for split in SPLITS:
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, lambda s=split: _load(prefix, kind, root_fn, s))
        meta = MetadataCatalog.get(name)
        meta.set(thing_classes=["person"], evaluator_type=kind, layout=kind)
        if split == "gallery":
            meta.set(query_set=f"{prefix}_query")
        if split == "query":
            meta.set(gallery_set=f"{prefix}_gallery")


def register_all():
    """The BUILTIN datasets; the PRW-layout ones also with their validation split by identity (id_val.py)."""
    for prefix, (kind, subdir) in BUILTIN.items():
        if f"{prefix}_train" not in DatasetCatalog.list():
            register_person_search(prefix, kind, subdir=subdir)
        if kind == "prw" and f"{prefix}{SUFFIX}_train" not in DatasetCatalog.list():
            register_id_val(prefix)
