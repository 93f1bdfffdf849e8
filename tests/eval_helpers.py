"""Hand-built person-search records and fake model outputs for the evaluation tests.

Embeddings are 2-D: a query is [1, 0] and a gallery detection with intended similarity s is
[s, sqrt(1 - s^2)], so similarities are exact and easy to rank by hand.
"""
import math
import uuid

import galw  # noqa: F401  (compat before detectron2)
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

QUERY_EMB = [1.0, 0.0]


def emb(s):
    return [s, math.sqrt(max(0.0, 1.0 - s * s))]


def anno(box, pid, attributes=None):
    a = {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": pid}
    if attributes is not None:
        a["attributes"] = list(attributes)
    return a


def record(name, image_id, annos, camera_id=-1):
    return {"file_name": f"/data/{name}", "image_id": image_id, "height": 500, "width": 500,
            "camera_id": camera_id, "annotations": annos}


def query_record(name, image_id, box, pid, camera_id=-1):
    r = record(name, image_id, [], camera_id)
    r.pop("annotations")
    r["query"] = {"bbox": list(box), "person_id": pid}
    return r


def register(kind, gallery, queries, protocols=None, attribute_names=None):
    """Register a gallery/query pair under fresh names; return the gallery name."""
    tag = uuid.uuid4().hex[:8]
    g, q = f"evaltest_{kind}_gallery_{tag}", f"evaltest_{kind}_query_{tag}"
    DatasetCatalog.register(g, lambda: gallery)
    DatasetCatalog.register(q, lambda: queries)
    meta = {"evaluator_type": kind, "query_set": q, "thing_classes": ["person"]}
    if protocols is not None:
        meta["gallery_protocols"] = protocols
    if attribute_names is not None:
        meta["attribute_names"] = attribute_names
    MetadataCatalog.get(g).set(**meta)
    MetadataCatalog.get(q).set(gallery_set=g)
    return g


def gallery_io(rec, dets, attribute_probs=None):
    """(input, output) for a gallery image; dets = [(box, score, similarity or embedding)]."""
    inst = Instances((rec["height"], rec["width"]))
    inst.pred_boxes = Boxes(torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
    embs = [emb(d[2]) if isinstance(d[2], float) else d[2] for d in dets]
    inst.embeddings = torch.tensor(embs, dtype=torch.float32).reshape(len(dets), -1) if dets else torch.zeros((0, 2))
    if attribute_probs is not None:
        inst.attribute_probs = torch.tensor(attribute_probs, dtype=torch.float32)
    inp = {k: rec[k] for k in ("file_name", "image_id", "height", "width")}
    return inp, {"instances": inst}


def query_io(qrec, embedding=QUERY_EMB, dets=None):
    """(input, output) for a query; the input box is the record's (scale 1)."""
    qi = Instances((qrec["height"], qrec["width"]))
    qi.gt_boxes = Boxes(torch.tensor([qrec["query"]["bbox"]], dtype=torch.float32))
    qi.gt_pids = torch.tensor([qrec["query"]["person_id"]], dtype=torch.int64)
    inp = {k: qrec[k] for k in ("file_name", "image_id", "height", "width")}
    inp["query_instances"] = qi
    out = {"query_embedding": torch.tensor(embedding, dtype=torch.float32)}
    if dets is not None:
        out["instances"] = gallery_io(qrec, dets)[1]["instances"]
    return inp, out


# ---------------------------------------------------------------- CUHK-SYSU scene
GT0 = [0, 0, 50, 100]  # query person 0 in g0
GT1 = [100, 100, 150, 200]  # query person 0 in g1
GT2 = [0, 0, 10, 10]  # query person 0 in g2 (small box: IoU threshold 100/400 = 0.25)
GT3 = [0, 0, 50, 100]  # query person 0 in g3 (never detected)
F_BOX = [200, 200, 250, 300]  # person 1 in g4


def cuhk_scene(duplicate=True):
    """Gallery records, query records, protocols and model outputs of the CUHK-SYSU scene.

    Query 0 (similarities, '+' the image's positive):
      g0: B .9 (+, IoU .89), A .6 (also overlaps, but B is first by similarity)
      g1: D .8, C .3 (+)     g2: E .5 (+, IoU .4 >= .25)   g3: undetected positive
      g4: F .7              g5: G .95 with score .4 (below the search threshold)
      ranking B+ D F A E+ C+ -> AP = (1 + 2/5 + 3/6)/3 * 3/4 = 0.475, top1 hit
    Query 1 (person in g4 only, gallery [g4, g0, g1]): B D F+ -> AP 1/3, top1 miss, top5 hit.
    """
    gallery = [
        record("g0.jpg", 0, [anno(GT0, 0)]),
        record("g1.jpg", 1, [anno(GT1, 0), anno([300, 300, 350, 400], -1)]),
        record("g2.jpg", 2, [anno(GT2, 0)]),
        record("g3.jpg", 3, [anno(GT3, 0)]),
        record("g4.jpg", 4, [anno(F_BOX, 1)]),
        record("g5.jpg", 5, []),
    ]
    queries = [query_record("q0.jpg", 100, [10, 10, 60, 110], 0), query_record("q1.jpg", 101, [5, 5, 50, 90], 1)]
    dets = {
        "g0.jpg": [([0, 0, 50, 100], 0.9, 0.6), ([2, 2, 52, 102], 0.9, 0.9)],
        "g1.jpg": [([100, 100, 150, 200], 0.95, 0.3), ([300, 300, 350, 400], 0.9, 0.8)],
        "g2.jpg": [([0, 0, 10, 25], 0.9, 0.5)],
        "g3.jpg": [([0, 0, 50, 100], 0.3, 0.99)],
        "g4.jpg": [(F_BOX, 0.9, 0.7)],
        "g5.jpg": [([0, 0, 40, 80], 0.4, 0.95)],
    }
    none = None
    g0_list = [
        {"image": "g0.jpg", "bbox": GT0}, {"image": "g1.jpg", "bbox": GT1}, {"image": "g2.jpg", "bbox": GT2},
        {"image": "g3.jpg", "bbox": GT3}, {"image": "g4.jpg", "bbox": none}, {"image": "g5.jpg", "bbox": none},
    ]
    if duplicate:
        g0_list.append({"image": "g4.jpg", "bbox": none})
    g1_list = [{"image": "g4.jpg", "bbox": F_BOX}, {"image": "g0.jpg", "bbox": none}, {"image": "g1.jpg", "bbox": none}]
    protocols = {
        "TestG50": [{"query_index": 0, "gallery": g0_list[:4]}, {"query_index": 1, "gallery": g1_list[:1]}],
        "TestG100": [{"query_index": 0, "gallery": g0_list}, {"query_index": 1, "gallery": g1_list}],
        "Occlusion": [{"query_index": 1, "gallery": g1_list}],
    }
    return gallery, queries, protocols, dets


def cuhk_ios(gallery, queries, dets):
    ios = [gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery]
    ios += [query_io(q) for q in queries]
    return ios


# ---------------------------------------------------------------- PRW scene
P_BOX = [10, 10, 60, 130]


def prw_scene():
    """Person 7 in f0 (query frame, cam 1), f1 (cam 1), f2 (cam 2); person 9 only in f3 (cam 2).

    Standard, query 0: gallery f1 f2 f3 -> f1n .9, f2+ .8, f3n .6, f1+ .4 -> AP (1/2 + 2/4)/2 = .5, top1 miss.
    Multi-view: gallery f2 f3 -> f2+ .8, f3n .6 -> AP 1, top1 hit (f1 leaves count_gt).
    Query 1 (person 9 in its own frame only) has no positive: left out and counted.
    """
    gallery = [
        record("c1s1_000001.jpg", 0, [anno(P_BOX, 7)], camera_id=1),
        record("c1s1_000002.jpg", 1, [anno(P_BOX, 7), anno([200, 10, 250, 130], -1)], camera_id=1),
        record("c2s1_000001.jpg", 2, [anno(P_BOX, 7)], camera_id=2),
        record("c2s1_000002.jpg", 3, [anno([300, 10, 350, 130], 9)], camera_id=2),
    ]
    queries = [
        query_record("c1s1_000001.jpg", 0, P_BOX, 7, camera_id=1),
        query_record("c2s1_000002.jpg", 3, [300, 10, 350, 130], 9, camera_id=2),
    ]
    dets = {
        "c1s1_000001.jpg": [(P_BOX, 0.99, 0.99)],
        "c1s1_000002.jpg": [(P_BOX, 0.9, 0.4), ([200, 10, 250, 130], 0.9, 0.9)],
        "c2s1_000001.jpg": [(P_BOX, 0.9, 0.8)],
        "c2s1_000002.jpg": [([300, 10, 350, 130], 0.9, 0.6)],
    }
    return gallery, queries, dets


# ---------------------------------------------------------------- random scene (for 1 vs N processes)
def random_cuhk_scene(seed=0, n_gallery=30, n_query=8, dim=8, gallery_size=10):
    """A random CUHK-SYSU-style scene with ties, undetected positives and duplicate entries."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gallery, dets = [], {}
    pid_boxes = {}
    for i in range(n_gallery):
        annos = []
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.integers(0, 400, size=2).tolist()
            box = [x, y, x + int(rng.integers(8, 60)), y + int(rng.integers(16, 120))]
            pid = int(rng.integers(-1, n_query))
            annos.append(anno(box, pid))
            if pid >= 0:
                pid_boxes.setdefault(pid, []).append((f"r{i}.jpg", box))
        gallery.append(record(f"r{i}.jpg", i, annos))
        d = []
        for a in annos:
            if rng.random() < 0.8:
                jit = rng.integers(-4, 5, size=4)
                e = rng.normal(size=dim)
                d.append(([float(v) for v in np.asarray(a["bbox"]) + jit], float(np.round(rng.random(), 1)),
                          (e / np.linalg.norm(e)).round(1).tolist()))
        dets[f"r{i}.jpg"] = d
    queries = [query_record(f"rq{q}.jpg", 1000 + q, [0, 0, 30, 60], q) for q in range(n_query)]
    names = [f"r{i}.jpg" for i in range(n_gallery)]
    protocols = {"TestG100": []}
    for q in range(n_query):
        pos = {}
        for img, box in pid_boxes.get(q, []):
            pos.setdefault(img, box)
        neg = [n for n in rng.permutation(names).tolist() if n not in pos][:gallery_size]
        entries = [{"image": k, "bbox": v} for k, v in pos.items()] + [{"image": n, "bbox": None} for n in neg]
        entries.append(entries[-1])
        protocols["TestG100"].append({"query_index": q, "gallery": entries})
    qembs = []
    for _ in range(n_query):
        e = rng.normal(size=dim)
        qembs.append((e / np.linalg.norm(e)).round(1).tolist())
    ios = [gallery_io(r, dets[r["file_name"].split("/")[-1]]) for r in gallery]
    ios += [query_io(q, embedding=e) for q, e in zip(queries, qembs)]
    return gallery, queries, protocols, ios
