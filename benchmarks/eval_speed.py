"""Speed of PersonSearchEvaluator at real scale on synthetic model outputs (prints figures).

CUHK-SYSU: 6,978 gallery images with ~10 detections each, 2,900 queries, TestG50..TestG4000,
Occlusion, Resolution and the whole gallery. PRW: 6,112 frames, 2,057 queries, standard and
multi-view. Embeddings are 256-D: identity vectors plus noise for detected persons, random
vectors for background, so positives rank realistically (neither all first nor random).

Usage: OMP_NUM_THREADS=2 PYTHONPATH=projects/GALW python benchmarks/eval_speed.py [--dataset cuhk|prw|both]
           [--baseline GIT_REV] [--cold-root CUHK_SYSU_ROOT]

Protocols are handed to the evaluator as galw.data does (``ProtocolTable`` columns, as read from
the parse cache): the "warm" figure. ``--cold-root`` names a full-size CUHK-SYSU fixture with a
TestG100.mat (``benchmarks/data_parse.py --cuhk-gallery-sizes 50,100 --keep ROOT``); its
TestG100.mat is parsed afresh (cache file removed) and "cold" = that parse + the warm evaluate().
The summary prints each figure against its target (2 cores): TestG100 evaluate() <= 0.5 s
warm and <= 2 s cold, the six-size sweep <= 10 s.

``--baseline REV`` first runs the same measurement with ``projects/GALW/galw`` as of git revision
REV (extracted with ``git archive`` into a temporary folder, run in a subprocess on the same data),
then with the working tree, and prints the ratios: old and new path in one run, under the same load.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time

import galw  # noqa: F401  (compat before detectron2)
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from galw.evaluation import PersonSearchEvaluator
from result_file import save

DIM = 256
SIZES = (50, 100, 500, 1000, 2000, 4000)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_box(rng):
    x, y = rng.uniform(0, 700), rng.uniform(0, 400)
    w, h = rng.uniform(20, 120), rng.uniform(50, 300)
    return [x, y, x + w, y + h]


def build_images(rng, n_images, n_ids, appearances, cameras=None):
    """Records and per-image detections; identity i appears in appearances[i] images."""
    id_vec = unit(rng.normal(size=(n_ids, DIM)))
    annos = [[] for _ in range(n_images)]
    where = []
    for pid in range(n_ids):
        imgs = rng.choice(n_images, size=appearances[pid], replace=False)
        where.append(imgs)
        for i in imgs:
            annos[i].append((random_box(rng), pid))
    for i in range(n_images):
        for _ in range(int(rng.integers(0, 3))):
            annos[i].append((random_box(rng), -1))
    records, outputs = [], []
    for i in range(n_images):
        name = f"s{i:05d}.jpg" if cameras is None else f"c{cameras[i]}s1_{i:06d}.jpg"
        records.append({
            "file_name": f"/synthetic/{name}", "image_id": i, "height": 600, "width": 800,
            "camera_id": -1 if cameras is None else int(cameras[i]),
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": p}
                            for b, p in annos[i]],
        })
        boxes, scores, embs = [], [], []
        for b, p in annos[i]:
            if rng.random() < 0.9:
                boxes.append(np.asarray(b) + rng.normal(scale=3, size=4))
                scores.append(rng.uniform(0.5, 1.0))
                base = id_vec[p] if p >= 0 else unit(rng.normal(size=DIM))
                embs.append(base + rng.normal(scale=0.08, size=DIM))
        for _ in range(10 - len(boxes)):
            boxes.append(random_box(rng))
            scores.append(rng.uniform(0.0, 1.0))
            embs.append(rng.normal(scale=0.08, size=DIM))
        inst = Instances((600, 800))
        inst.pred_boxes = Boxes(torch.tensor(np.asarray(boxes), dtype=torch.float32))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.embeddings = torch.from_numpy(unit(np.asarray(embs)))
        outputs.append({"instances": inst})
    return records, outputs, id_vec, where


def query_io(rec, box, pid, emb):
    qi = Instances((rec["height"], rec["width"]))
    qi.gt_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
    qi.gt_pids = torch.tensor([pid])
    inp = {"file_name": rec["file_name"], "image_id": rec["image_id"], "height": 600, "width": 800,
           "query_instances": qi}
    return inp, {"query_embedding": torch.from_numpy(emb)}


def register(kind, gallery, queries, **meta):
    g, q = f"bench_{kind}_gallery", f"bench_{kind}_query"
    DatasetCatalog.register(g, lambda: gallery)
    DatasetCatalog.register(q, lambda: queries)
    MetadataCatalog.get(g).set(evaluator_type=kind, query_set=q, thing_classes=["person"], **meta)
    return g


def feed(evaluator, records, outputs, query_ios):
    t0 = time.perf_counter()
    evaluator.reset()
    for r, o in zip(records, outputs):
        evaluator.process([{"file_name": r["file_name"], "image_id": r["image_id"], "height": 600, "width": 800}], [o])
    for inp, out in query_ios:
        evaluator.process([inp], [out])
    return time.perf_counter() - t0


def subset(cols, rows):
    """The columns of a protocol restricted to the queries at ``rows`` (ascending)."""
    starts = np.cumsum(cols["counts"]) - cols["counts"]
    box_starts = np.concatenate([[0], np.cumsum(cols["has_box"])])[starts]
    entries = np.concatenate([np.arange(starts[r], starts[r] + cols["counts"][r]) for r in rows])
    boxes = [cols["boxes"][b] for r in rows for b in range(box_starts[r], box_starts[r] + cols["has_box"][
        starts[r]:starts[r] + cols["counts"][r]].sum())]
    return {"query_index": cols["query_index"][rows], "counts": cols["counts"][rows], "images": cols["images"],
            "image_index": cols["image_index"][entries], "has_box": cols["has_box"][entries], "boxes": boxes}


def as_protocol(name, cols):
    """What galw.data hands the evaluator: a ProtocolTable; for a galw before it (``--baseline``), the
    list of entry dicts its parse cache was unpacked into."""
    try:
        from galw.data.protocol_table import ProtocolTable
    except ImportError:
        names, boxes = cols["images"].tolist(), iter(cols["boxes"])
        gallery = [{"image": names[i], "bbox": next(boxes) if b else None}
                   for i, b in zip(cols["image_index"].tolist(), cols["has_box"].tolist())]
        ends = np.cumsum(cols["counts"]).tolist()
        return [{"query_index": q, "gallery": gallery[a:b]}
                for q, a, b in zip(cols["query_index"].tolist(), [0, *ends[:-1]], ends)]
    return ProtocolTable.from_columns(cols, name)


def report(name, evaluator, results, t_process, t_total):
    print(f"\n== {name}: process() of all outputs {t_process:.2f} s, evaluate() {t_total:.2f} s, "
          f"peak RSS {peak_rss_mb():.0f} MB")
    cpu = evaluator.cpu_timings
    for k, v in evaluator.timings.items():
        print(f"  {k:14s} wall {v:7.2f} s   cpu {cpu[k]:7.2f} s")
    for task, m in results.items():
        print(f"  {task:22s} " + "  ".join(f"{k}={v:.2f}" for k, v in m.items()))


def bench_cuhk(rng):
    n_img, n_q = 6978, 2900
    records, outputs, id_vec, where = build_images(rng, n_img, n_q, rng.integers(1, 5, size=n_q))
    names = [os.path.basename(r["file_name"]) for r in records]
    box_of = {}
    for i, r in enumerate(records):
        for a in r["annotations"]:
            if a["person_id"] >= 0:
                box_of[(a["person_id"], i)] = a["bbox"]
    # Query images are outside the gallery (as in CUHK-SYSU); negatives share one entry dict per image.
    queries, query_ios = [], []
    for q in range(n_q):
        rec = {"file_name": f"/synthetic/query_{q:05d}.jpg", "image_id": 100000 + q, "height": 600, "width": 800,
               "camera_id": -1, "query": {"bbox": [10, 10, 60, 160], "person_id": q}}
        queries.append(rec)
        query_ios.append(query_io(rec, rec["query"]["bbox"], q, unit(id_vec[q] + rng.normal(scale=0.08, size=DIM))))
    protocols = {}
    for size in SIZES:
        cols = {"query_index": np.arange(n_q), "counts": np.full(n_q, size), "images": np.asarray(names),
                "image_index": [], "has_box": [], "boxes": []}
        for q in range(n_q):
            pos = list(where[q])
            cand = rng.choice(n_img, size=size + len(pos), replace=False)
            neg = cand[~np.isin(cand, pos)][: size - len(pos)]
            cols["image_index"].append(np.concatenate([pos, neg]))
            cols["has_box"].append(np.arange(size) < len(pos))
            cols["boxes"].extend(box_of[(q, i)] for i in pos)
        for k in ("image_index", "has_box"):
            cols[k] = np.concatenate(cols[k])
        protocols[f"TestG{size}"] = cols
    for name, n in (("Occlusion", 187), ("Resolution", 290)):
        rows = np.sort(rng.choice(n_q, n, replace=False))
        protocols[name] = subset(protocols["TestG100"], rows)
    protocols = {k: as_protocol(k, v) for k, v in protocols.items()}
    name = register("cuhk_sysu", records, queries, gallery_protocols=protocols)
    print(f"CUHK-SYSU synthetic: {n_img} gallery images, {sum(len(o['instances']) for o in outputs)} detections, "
          f"{n_q} queries, peak RSS after building {peak_rss_mb():.0f} MB")

    ev = PersonSearchEvaluator(name, output_dir=None, cuhk_protocols=("TestG100",), distributed=False)
    t_process = feed(ev, records, outputs, query_ios)
    t0, c0 = time.perf_counter(), time.process_time()
    results = ev.evaluate()
    summary = {"TestG100 evaluate() wall": time.perf_counter() - t0, "TestG100 evaluate() cpu": time.process_time() - c0}
    report("CUHK-SYSU TestG100 only", ev, results, t_process, time.perf_counter() - t0)
    summary["TestG100 search mAP"] = results["search"]["mAP"]
    summary["TestG100 search top1"] = results["search"]["top1"]

    ev = PersonSearchEvaluator(name, output_dir=None, distributed=False)
    t_process = feed(ev, records, outputs, query_ios)
    t0, c0 = time.perf_counter(), time.process_time()
    results = ev.evaluate()
    summary["all protocols evaluate() wall"] = time.perf_counter() - t0
    summary["all protocols evaluate() cpu"] = time.process_time() - c0
    report("CUHK-SYSU all protocols", ev, results, t_process, time.perf_counter() - t0)
    for label, t in (("wall", ev.timings), ("cpu", ev.cpu_timings)):
        sweep = sum(t[f"TestG{s}"] for s in SIZES)
        print(f"  six-size sweep ({label}) {sweep:.2f} s + shared similarity {t['similarity']:.2f} s "
              f"= {sweep + t['similarity']:.2f} s")
        summary[f"six-size sweep {label}"] = sweep + t["similarity"]
    summary["TestG4000 search mAP"] = results["search_TestG4000"]["mAP"]
    return summary

def bench_prw(rng):
    n_img, n_ids, n_q = 6112, 450, 2057
    cameras = rng.integers(1, 7, size=n_img)
    records, outputs, id_vec, where = build_images(rng, n_img, n_ids, rng.integers(10, 60, size=n_ids), cameras)
    queries, query_ios = [], []
    per_id = np.bincount(rng.integers(0, n_ids, size=n_q), minlength=n_ids)
    for pid in range(n_ids):
        frames = rng.choice(where[pid], size=min(per_id[pid], len(where[pid])), replace=False)
        for i in frames:
            rec = records[i]
            box = next(a["bbox"] for a in rec["annotations"] if a["person_id"] == pid)
            q = {"file_name": rec["file_name"], "image_id": rec["image_id"], "height": 600, "width": 800,
                 "camera_id": rec["camera_id"], "query": {"bbox": box, "person_id": pid}}
            queries.append(q)
            query_ios.append(query_io(q, box, pid, unit(id_vec[pid] + rng.normal(scale=0.08, size=DIM))))
    name = register("prw", records, queries)
    print(f"\nPRW synthetic: {n_img} frames, {sum(len(o['instances']) for o in outputs)} detections, "
          f"{len(queries)} queries")
    ev = PersonSearchEvaluator(name, output_dir=None, distributed=False)
    t_process = feed(ev, records, outputs, query_ios)
    t0 = time.perf_counter()
    results = ev.evaluate()
    report("PRW standard + multi-view", ev, results, t_process, time.perf_counter() - t0)
    return {"PRW evaluate() wall": time.perf_counter() - t0, "PRW search mAP": results["search"]["mAP"]}


TARGETS = {"TestG100 evaluate() wall": 0.5, "TestG100 cold (parse + evaluate) wall": 2.0, "six-size sweep wall": 10.0}


def cold_parse(root):
    """Seconds (wall, CPU) to parse root's TestG100.mat on first use (its cache file removed; the base cache
    kept), with ``scipy.io.loadmat`` (the scan disabled, as before it existed) and with the default reader."""
    from galw.data import CUHKSYSU, cuhk_sysu

    CUHKSYSU(root).records("query")
    cache = os.path.join(root, ".galw_cache", "cuhk_sysu_TestG100.npz")
    out = {}
    scan = cuhk_sysu.scan_struct
    for arm, reader in (("loadmat", lambda *a: None), ("default", scan)):
        if os.path.exists(cache):
            os.remove(cache)
        cuhk_sysu.scan_struct = reader
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            n = len(CUHKSYSU(root).protocols()["TestG100"])
        finally:
            cuhk_sysu.scan_struct = scan
        out[arm] = (time.perf_counter() - t0, time.process_time() - c0)
        print(f"\nTestG100.mat of {root} parsed on first use, {arm} reader: {out[arm][0]:.2f} s wall, "
              f"{out[arm][1]:.2f} s CPU ({n} queries)")
    print(f"first parse default/loadmat: wall {out['default'][0] / out['loadmat'][0]:.3f}, "
          f"CPU {out['default'][1] / out['loadmat'][1]:.3f}")
    return out


def run_baseline(rev, dataset):
    """The same measurement with galw as of git revision ``rev``, in a subprocess; its summary."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "galw.tar")
        subprocess.run(["git", "-C", root, "archive", "-o", archive, rev, "projects/GALW/galw"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        env = dict(os.environ, PYTHONPATH=os.path.join(tmp, "projects", "GALW"))
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--dataset", dataset, "--summary-json"],
                             env=env, check=True, capture_output=True, text=True).stdout
    print(f"---- baseline galw at {rev} ----")
    print(out.split("SUMMARY ")[0])
    return json.loads(out.split("SUMMARY ")[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="both", choices=["cuhk", "prw", "both"])
    parser.add_argument("--baseline", default=None, help="git revision of galw to compare against, in this run")
    parser.add_argument("--cold-root", default=None, help="CUHK-SYSU fixture root whose TestG100.mat is parsed cold")
    parser.add_argument("--summary-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    baseline = run_baseline(args.baseline, args.dataset) if args.baseline else None
    print(f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    summary = {}
    if args.dataset in ("cuhk", "both"):
        summary.update(bench_cuhk(rng))
        if args.cold_root and not args.summary_json:
            parsed = cold_parse(args.cold_root)
            summary["TestG100.mat first parse wall, loadmat"] = parsed["loadmat"][0]
            summary["TestG100.mat first parse wall"] = parsed["default"][0]
            summary["TestG100 cold (parse + evaluate) wall"] = (summary["TestG100.mat first parse wall"]
                                                                + summary["TestG100 evaluate() wall"])
    if args.dataset in ("prw", "both"):
        summary.update(bench_prw(rng))
    summary["load average (1 min) at the end"] = os.getloadavg()[0]
    if args.summary_json:
        print("SUMMARY " + json.dumps(summary))
        return
    print("\n== summary" + (f" (baseline {args.baseline} vs working tree, same data)" if baseline else ""))
    for k, v in summary.items():
        old = "" if baseline is None or k not in baseline else f"   baseline {baseline[k]:8.2f}" + (
            f"   ratio new/old {v / baseline[k]:.2f}" if "mAP" not in k and "top1" not in k and "load" not in k else "")
        target = f"   target <= {TARGETS[k]:.1f} s: {'met' if v <= TARGETS[k] else 'NOT met'}" if k in TARGETS else ""
        print(f"  {k:40s} {v:8.2f}{old}{target}")
    save("eval_speed_" + args.dataset, {
        "settings": {"dataset": args.dataset, "baseline": args.baseline, "cold root": bool(args.cold_root)},
        "rows": [{"figure": k, "value": round(v, 3), "target": f"<= {TARGETS[k]} s" if k in TARGETS else "",
                  **({"baseline": round(baseline[k], 3)} if baseline and k in baseline else {})}
                 for k, v in summary.items()]})


if __name__ == "__main__":
    main()
