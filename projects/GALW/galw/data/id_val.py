"""A validation split of a PRW-layout training set by identity, for choosing hyper-parameters
(the ablation's static loss weights) without looking at the test gallery.

Every HOLDOUT_EVERY-th training identity (labels HOLDOUT_EVERY - 1, 2 * HOLDOUT_EVERY - 1, ...) is
held out. ``<prefix>_idval_train``: the training images in which no held-out identity appears, its
identities relabelled 0..n-1 (``num_pids`` = n, the OIM lookup table's size). ``<prefix>_idval_gallery``:
the images where one appears; only held-out people keep a label, the others count as unlabeled
people (detection ground truth, never a match). ``<prefix>_idval_query``: per held-out identity seen
in two or more of those images, a query box from its first image in each of up to QUERIES_PER_ID
cameras (record order); PRW's standard
protocol searches the other gallery images (query_galleries.PrwQueryGalleries). So no image, and no
person, of the validation search is ever trained on.
"""
import copy
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["HOLDOUT_EVERY", "QUERIES_PER_ID", "SUFFIX", "held_out_ids", "register_id_val", "split_by_identity"]

logger = logging.getLogger(__name__)

#: One training identity in this many is held out (10 %). Each appears in about 1 image in 15 of
#: SynthPS (4 labeled people per image), so 10 % of the identities take a third of the images with them
#: (default size: 266 of 400 training images, 54 of 60 identities kept; 134 validation images).
HOLDOUT_EVERY = 10
#: Queries per held-out identity, from different cameras (SynthPS's PRW query_info.txt has up to 2).
QUERIES_PER_ID = 2
#: The registered names: ``<prefix><SUFFIX>_{train,gallery,query}``.
SUFFIX = "_idval"


def held_out_ids(labels, every=HOLDOUT_EVERY):
    """The held-out labels among ``labels``: every ``every``-th in sorted order (at least one)."""
    labels = sorted(set(labels))
    if len(labels) < 2:
        raise ValueError(f"a validation split by identity needs 2+ training identities, got {len(labels)}")
    return set(labels[every - 1::every]) or {labels[-1]}


def _pid(record, j, a):
    """Annotation ``j``'s person_id as an int; an error naming the image when it has none."""
    try:
        return int(a["person_id"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{record.get('file_name', record.get('image_id'))}: annotation {j} has person_id "
                         f"{a.get('person_id', '<missing>')!r}; expected every annotation to have an integer "
                         "person_id (-1 for an unlabeled person, PRW layout)") from None


def _labels(record):
    return {p for p in (_pid(record, j, a) for j, a in enumerate(record.get("annotations", []))) if p >= 0}


def split_by_identity(records, every=HOLDOUT_EVERY):
    """(train records, gallery records, query records, num_pids of the train records) of ``records``."""
    labels = set().union(*(_labels(r) for r in records)) if records else set()
    held = held_out_ids(labels, every)
    kept = {p: i for i, p in enumerate(sorted(labels - held))}
    train, gallery, seen = [], [], {}
    for r in records:
        r = copy.deepcopy(r)
        if _labels(r) & held:
            for a in r["annotations"]:
                a["person_id"] = int(a["person_id"]) if int(a["person_id"]) in held else -1
                if a["person_id"] >= 0:
                    seen.setdefault(a["person_id"], []).append((len(gallery), a["bbox"]))
            gallery.append(r)
        else:
            for a in r["annotations"]:
                a["person_id"] = kept[int(a["person_id"])] if int(a["person_id"]) >= 0 else -1
            train.append(r)
    queries = []
    for pid in sorted(seen):
        if len({i for i, _ in seen[pid]}) < 2:
            continue  # a query needs a match in another image
        cameras = []
        for i, box in seen[pid]:  # its first image in each of (up to) QUERIES_PER_ID cameras
            g = gallery[i]
            cam = g.get("camera_id", -1)
            if cam in cameras or len(cameras) == QUERIES_PER_ID:
                continue
            cameras.append(cam)
            queries.append(dict({k: g[k] for k in ("file_name", "image_id", "height", "width", "camera_id") if k in g},
                                query={"bbox": list(box), "person_id": pid}))
    if not queries:
        raise ValueError(f"validation split: none of the held-out identities {sorted(held)} appears in two images; "
                         "expected at least one in two or more (a query needs a match in another image)")
    return train, gallery, queries, len(kept)


def register_id_val(prefix, every=HOLDOUT_EVERY):
    """Register ``<prefix>_idval_{train,gallery,query}`` from the registered ``<prefix>_train`` (PRW layout)."""
    base = f"{prefix}_train"
    if base not in DatasetCatalog.list():
        raise KeyError(f"register_id_val: {base!r} is not registered")
    name = prefix + SUFFIX

    def load(part):
        try:
            train, gallery, queries, num_pids = split_by_identity(DatasetCatalog.get(base), every)
        except ValueError as e:
            raise ValueError(f"{name}_{part} (the validation split by identity of {base!r}): {e}") from e
        if part == "train":  # num_pids follows today's root (as builtin._set_file_metadata does)
            full = f"{name}_train"
            keep = {k: v for k, v in MetadataCatalog.get(full).as_dict().items() if k not in ("name", "num_pids")}
            MetadataCatalog.remove(full)
            MetadataCatalog.get(full).set(**keep, num_pids=num_pids)
        records = {"train": train, "gallery": gallery, "query": queries}[part]
        logger.info("Validation split %s_%s: %d records (%d training identities kept)", name, part, len(records),
                    num_pids)
        return records

    for part in ("train", "gallery", "query"):
        DatasetCatalog.register(f"{name}_{part}", lambda p=part: load(p))
        _set_meta(f"{name}_{part}", part, name)


def _set_meta(full, part, name):
    meta = MetadataCatalog.get(full)
    meta.set(thing_classes=["person"], evaluator_type="prw", layout="prw")
    if part == "gallery":
        meta.set(query_set=f"{name}_query")
    if part == "query":
        meta.set(gallery_set=f"{name}_gallery")
