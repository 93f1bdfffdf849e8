"""SynthPS: a small synthetic person-search dataset written in the REAL PRW or CUHK-SYSU layout.

Scenes hold several drawn people whose identity lives in their appearance (clothing colours and
pattern, body proportions, hair, accessories). Identities reappear across frames and cameras with
other poses, scales, positions and lighting; people get partially occluded by clutter and by each
other; unlabeled passers-by appear too. Every person has binary attributes (``ATTRIBUTE_NAMES``),
written to ``<root>/attributes.json``. Everything derives from one seed: the same seed writes the
same annotation bytes.

    python -m galw.data.synthetic --layout prw --out datasets/SynthPS-PRW --seed 0 [--size tiny]
"""
import argparse
import json
import os
from dataclasses import dataclass

import cv2
import numpy as np

from .matlab import cell_array, savemat_deterministic, struct_array
from .synthetic_scenes import ATTRIBUTE_NAMES, scenes as draw_scenes

__all__ = ["ATTRIBUTE_NAMES", "SIZES", "generate"]


@dataclass(frozen=True)
class SynthSize:
    width: int
    height: int
    train_frames: int
    test_frames: int
    train_ids: int
    test_ids: int
    cameras: int = 6


SIZES = {
    "tiny": SynthSize(width=192, height=144, train_frames=10, test_frames=10, train_ids=5, test_ids=4),
    "default": SynthSize(width=320, height=240, train_frames=400, test_frames=200, train_ids=60, test_ids=40),
}


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, sort_keys=True, separators=(",", ":"))


def generate_prw(out, size, seed):
    rng = np.random.default_rng(seed)
    for d in ("frames", "annotations", "query_box"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    W, H = size.width, size.height
    # non-contiguous original training ids (a gap and one large id) as in PRW
    train_orig = [i + 1 if i < size.train_ids // 2 else i + 2 for i in range(size.train_ids - 1)] + [932]
    test_orig = [1001 + i for i in range(size.test_ids)]
    names = {"train": [], "test": []}
    attributes, occurrences = {}, {}
    counters = [0] * size.cameras
    for n, (split, cam, img, persons) in enumerate(draw_scenes(rng, size, False, "SynthPS-PRW")):
        counters[cam] += 1
        name = f"c{cam + 1}s1_{counters[cam] * 25:06d}"
        cv2.imwrite(os.path.join(out, "frames", name + ".jpg"), img)
        rows, attr_rows = [], []
        for pid, (x1, y1, x2, y2), occ, attrs in persons:
            orig = -2 if pid < 0 else (train_orig if split == "train" else test_orig)[pid]
            xywh = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
            rows.append([orig] + xywh)
            clipped = [max(0.0, xywh[0]), max(0.0, xywh[1]), min(float(W), xywh[0] + xywh[2]),
                       min(float(H), xywh[1] + xywh[3])]
            attr_rows.append({"bbox": clipped, "attributes": list(attrs)})
            if split == "test" and pid >= 0:
                occurrences.setdefault(pid, []).append((occ, cam, name, orig, xywh))
        key = ("box_new", "anno_file", "anno_previous")[0 if n % 7 else (1 if n % 14 else 2)]
        savemat_deterministic(os.path.join(out, "annotations", name + ".jpg.mat"),
                              {key: np.asarray(rows, dtype=np.float64).reshape(-1, 5)})
        attributes[name + ".jpg"] = attr_rows
        names[split].append(name)
    savemat_deterministic(os.path.join(out, "frame_train.mat"), {"img_index_train": cell_array(names["train"])})
    savemat_deterministic(os.path.join(out, "frame_test.mat"), {"img_index_test": cell_array(names["test"])})
    savemat_deterministic(os.path.join(out, "ID_train.mat"), {"ID_train": np.asarray([train_orig], np.float64)})
    savemat_deterministic(os.path.join(out, "ID_test.mat"), {"ID_test2": np.asarray([test_orig], np.float64)})
    lines = []
    for pid in sorted(occurrences):
        occ = occurrences[pid]
        if len(occ) < 2:
            continue  # a query needs a gallery match in another frame
        seen = set()
        for _o, cam, name, orig, xywh in sorted(occ, key=lambda t: t[0]):  # least occluded per camera
            if cam in seen or len(seen) == 2:
                continue
            seen.add(cam)
            lines.append(f"{orig} {xywh[0]:g} {xywh[1]:g} {xywh[2]:g} {xywh[3]:g} {name}\r\n")
            img = cv2.imread(os.path.join(out, "frames", name + ".jpg"))
            x1, y1 = max(0, int(xywh[0])), max(0, int(xywh[1]))
            crop = img[y1:int(xywh[1] + xywh[3]), x1:int(xywh[0] + xywh[2])]
            cv2.imwrite(os.path.join(out, "query_box", f"{orig}_{name}.jpg"), crop)
    with open(os.path.join(out, "query_info.txt"), "w", newline="") as f:
        f.writelines(lines)
    _write_json(os.path.join(out, "attributes.json"), {"attribute_names": ATTRIBUTE_NAMES, "images": attributes})
    return {"frames": len(names["train"]) + len(names["test"]), "queries": len(lines)}


def generate_cuhk(out, size, seed):
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(out, "Image", "SSM")
    tt_dir = os.path.join(out, "annotation", "test", "train_test")
    sub_dir = os.path.join(out, "annotation", "test", "subset")
    for d in (img_dir, tt_dir, sub_dir):
        os.makedirs(d, exist_ok=True)
    images, pool, attributes = [], [], {}
    train_scenes = {}
    test_occ = {}
    for n, (split, _cam, img, persons) in enumerate(draw_scenes(rng, size, True, "SynthPS-CUHK")):
        name = f"s{n + 1}.jpg"
        cv2.imwrite(os.path.join(img_dir, name), img)
        boxes, attr_rows = [], []
        for pid, (x1, y1, x2, y2), occ, attrs in persons:
            xywh = [int(round(x1)), int(round(y1)), int(round(x2 - x1)), int(round(y2 - y1))]
            hard = int(occ > 0.3)
            boxes.append((np.asarray([xywh], np.float64), np.asarray([[hard]], np.float64)))
            attr_rows.append({"bbox": [xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3]],
                              "attributes": list(attrs)})
            if pid >= 0:
                target = train_scenes if split == "train" else test_occ
                target.setdefault(pid, []).append((name, xywh, hard, occ))
        if n == 0:  # a degenerate box as in the real Images.mat (dropped by the loader)
            boxes.append((np.asarray([[5, 5, 0, 12]], np.float64), np.asarray([[0]], np.float64)))
        images.append((name, boxes))
        attributes[name] = attr_rows
        if split == "test":
            pool.append(name)
    img_arr = struct_array(("imname", "nAppear", "box"),
                       [(name, np.asarray([[len(b)]], np.float64), struct_array(("idlocate", "ishard"), b))
                        for name, b in images])
    savemat_deterministic(os.path.join(out, "annotation", "Images.mat"), {"Img": img_arr})
    savemat_deterministic(os.path.join(out, "annotation", "pool.mat"), {"pool": cell_array(pool)})
    train = np.empty((len(train_scenes), 1), dtype=object)
    for k, pid in enumerate(sorted(train_scenes)):
        scenes = [(nm, np.asarray([xywh], np.float64), np.asarray([[hard]], np.float64))
                  for nm, xywh, hard, _ in train_scenes[pid]]
        train[k, 0] = struct_array(("idname", "nAppear", "scene"),
                               [(f"p{pid + 1}", np.asarray([[len(scenes)]], np.float64),
                                 struct_array(("imname", "idlocate", "ishard"), scenes))])
    savemat_deterministic(os.path.join(tt_dir, "Train.mat"), {"Train": train})
    # one query per test identity seen at least twice; gallery = positives first, then negatives
    queries = []
    for pid in sorted(test_occ):
        occ = test_occ[pid]
        if len(occ) < 2:
            continue
        qi = int(rng.integers(len(occ)))
        others = occ[:qi] + occ[qi + 1:]
        with_id = {o[0] for o in occ}
        negatives = [nm for nm in pool if nm not in with_id]
        queries.append((pid, occ[qi], others, [negatives[i] for i in rng.permutation(len(negatives))]))

    def protocol(entries, gallery_size):
        rows = []
        for pid, (qname, qxywh, qhard, _), positives, negatives in entries:
            gal = [(nm, np.asarray([xywh], np.float64), np.asarray([[hard]], np.float64))
                   for nm, xywh, hard, _ in positives]
            gal += [(nm, np.zeros((1, 0)), np.zeros((1, 0))) for nm in negatives[:max(0, gallery_size - len(gal))]]
            query = struct_array(("imname", "idlocate", "ishard", "idname"),
                             [(qname, np.asarray([qxywh], np.float64), np.asarray([[qhard]], np.float64),
                               f"p{size.train_ids + pid + 1}")])
            rows.append((query, struct_array(("imname", "idlocate", "ishard"), gal)))
        return struct_array(("Query", "Gallery"), rows)

    for g in (50, 100, 500, 1000, 2000, 4000):
        savemat_deterministic(os.path.join(tt_dir, f"TestG{g}.mat"), {f"TestG{g}": protocol(queries, g)})
    by_occ = sorted(queries, key=lambda q: -q[1][3])
    occluded = [q for q in by_occ if q[1][3] > 0.2] or by_occ[:1]
    by_height = sorted(queries, key=lambda q: q[1][1][3])
    low_res = by_height[:max(1, len(queries) // 10)]
    keep_order = lambda sub: [q for q in queries if any(q is s for s in sub)]
    savemat_deterministic(os.path.join(sub_dir, "Occlusion.mat"), {"Occlusion1": protocol(keep_order(occluded), 100)})
    savemat_deterministic(os.path.join(sub_dir, "Resolution.mat"), {"Test_Size": protocol(keep_order(low_res), 100)})
    _write_json(os.path.join(out, "attributes.json"), {"attribute_names": ATTRIBUTE_NAMES, "images": attributes})
    return {"images": len(images), "queries": len(queries)}


def generate(layout, out, seed=0, size="default"):
    """Write SynthPS in the ``layout`` ('prw' or 'cuhk') under ``out``; returns counts."""
    spec = SIZES[size] if isinstance(size, str) else size
    os.makedirs(out, exist_ok=True)
    if layout == "prw":
        return generate_prw(out, spec, seed)
    if layout == "cuhk":
        return generate_cuhk(out, spec, seed)
    raise ValueError(f"Unknown layout {layout!r}; expected 'prw' or 'cuhk'")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the SynthPS synthetic person-search dataset.")
    parser.add_argument("--layout", choices=("prw", "cuhk"), required=True)
    parser.add_argument("--out", required=True, help="dataset root, e.g. datasets/SynthPS-PRW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    args = parser.parse_args(argv)
    counts = generate(args.layout, args.out, args.seed, args.size)
    print(f"SynthPS ({args.layout}, {args.size}, seed {args.seed}) written to {args.out}: {counts}")


if __name__ == "__main__":
    main()
