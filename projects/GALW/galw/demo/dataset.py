"""The demo's SynthPS-PRW: written once per (size, seed), registered as ``demo_synth_prw_*``."""
import json
import os
import shutil

from detectron2.data import DatasetCatalog, MetadataCatalog

from galw.data import register_person_search
from galw.data.synthetic import generate

from .config import PREFIX

__all__ = ["STAMP", "prepare_dataset", "register_demo_dataset"]

#: Written into the dataset root after generation; a later demo reuses the data only if it matches.
STAMP = "synthps_demo_stamp.json"


def prepare_dataset(root, size, seed):
    """Write SynthPS-PRW under ``root`` unless the stamp there says the same size and seed;
    returns "generated" or "reused". A non-empty folder without the stamp is not touched."""
    want = {"layout": "prw", "size": size, "seed": seed}
    stamp_path = os.path.join(root, STAMP)
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            have = json.load(f)
        if have == want:
            print(f"SynthPS-PRW ({size}, seed {seed}) already in {root}: reused", flush=True)
            return "reused"
        print(f"{root} holds SynthPS {have}, not {want}: writing it again", flush=True)
        shutil.rmtree(root)
    elif os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} exists but has no {STAMP} (not written by the demo): remove it or pass another --data-root"
        )
    counts = generate("prw", root, seed=seed, size=size)
    with open(stamp_path, "w") as f:
        json.dump(want, f)
    print(f"SynthPS-PRW ({size}, seed {seed}) written to {root}: {counts}", flush=True)
    return "generated"


def register_demo_dataset(root):
    """(Re)register ``demo_synth_prw_{train,gallery,query}`` at ``root``."""
    for split in ("train", "gallery", "query"):
        name = f"{PREFIX}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_person_search(PREFIX, "prw", root=root)
