"""Parse time of the CUHK-SYSU and PRW loaders on full-size fixtures in the real layouts.

Builds (in a temp dir) CUHK-SYSU with 18,184 images / ~95,500 boxes / 5,532 train identities /
2,900 queries, and PRW with 11,816 frames / 2,057 queries; images are hard links to one JPEG
(the loaders read only image headers). Prints cold (parse) and warm (cache) seconds.

    PYTHONPATH=$PWD/projects/GALW:$PWD .venv/bin/python benchmarks/data_parse.py [--cuhk-gallery-sizes 50,100]
        [--keep DIR]

Writing a TestG<N>.mat with scipy.io.savemat costs about 0.5 ms per gallery entry (TestG4000
holds 11.6M), so by default only TestG50 is written at full size; protocols are parsed on first
access, so the gallery/query/train loads need only TestG50.

The cache is an .npz read with numpy.load(allow_pickle=False); the last lines compare reading it
(cache hit, before building the records) with unpickling the same value, measured in this run.
"""
import argparse
import os
import pickle
import tempfile
import time

import cv2
import numpy as np
import scipy.io

import galw  # noqa: F401
from galw.data import CUHKSYSU, PRW
from galw.data.matlab import cell_array as cell, struct_array as structs
from galw.data.records import _fingerprint, cached_parse
from result_file import save


def link_images(src, paths):
    for p in paths:
        try:
            os.link(src, p)
        except OSError:
            with open(src, "rb") as f, open(p, "wb") as g:
                g.write(f.read())


def build_cuhk(root, gallery_sizes, rng):
    ann = os.path.join(root, "annotation")
    img_dir = os.path.join(root, "Image", "SSM")
    for d in (img_dir, os.path.join(ann, "test", "train_test"), os.path.join(ann, "test", "subset")):
        os.makedirs(d, exist_ok=True)
    names = [f"s{i + 1}.jpg" for i in range(18184)]
    jpg = os.path.join(root, "one.jpg")
    cv2.imwrite(jpg, np.zeros((600, 800, 3), np.uint8))
    link_images(jpg, [os.path.join(img_dir, n) for n in names])
    boxes = {}
    rows = []
    for i, n in enumerate(names):
        k = 5 + (i % 4 == 0)
        b = np.column_stack([rng.integers(0, 700, k), rng.integers(0, 400, k), rng.integers(20, 90, k),
                             rng.integers(50, 190, k)]).astype(np.float64)
        boxes[n] = b
        rows.append((n, np.array([[k]], float), structs(("idlocate", "ishard"), [(b[j:j + 1], np.zeros((1, 1)))
                                                                                 for j in range(k)])))
    scipy.io.savemat(os.path.join(ann, "Images.mat"), {"Img": structs(("imname", "nAppear", "box"), rows)})
    pool, train = names[:6978], names[6978:]
    scipy.io.savemat(os.path.join(ann, "pool.mat"), {"pool": cell(pool)})
    ids = []
    for p in range(5532):
        scenes = [(n, boxes[n][p % 5:p % 5 + 1], np.zeros((1, 1))) for n in (train[p], train[(p * 7 + 1) % len(train)])]
        ids.append(structs(("idname", "nAppear", "scene"), [(f"p{p}", np.array([[2.0]]),
                                                              structs(("imname", "idlocate", "ishard"), scenes))]))
    scipy.io.savemat(os.path.join(ann, "test", "train_test", "Train.mat"), {"Train": cell(ids)})
    empty = np.zeros((1, 0))
    for size in gallery_sizes:
        qrows = []
        for q in range(2900):
            qn, pn = pool[q], pool[(q + 1) % len(pool)]
            query = structs(("imname", "idlocate", "ishard", "idname"), [(qn, boxes[qn][:1], np.zeros((1, 1)), f"q{q}")])
            gal = [(pn, boxes[pn][1:2], np.zeros((1, 1)))] + [
                (pool[(q + 2 + j) % len(pool)], empty, empty) for j in range(size - 1)]
            qrows.append((query, structs(("imname", "idlocate", "ishard"), gal)))
        scipy.io.savemat(os.path.join(ann, "test", "train_test", f"TestG{size}.mat"),
                         {f"TestG{size}": structs(("Query", "Gallery"), qrows)})
    return root


def build_prw(root, rng):
    frames, annos = os.path.join(root, "frames"), os.path.join(root, "annotations")
    os.makedirs(frames, exist_ok=True)
    os.makedirs(annos, exist_ok=True)
    names = [f"c{i % 6 + 1}s{i % 4 + 1}_{i * 5:06d}" for i in range(11816)]
    jpg = os.path.join(root, "one.jpg")
    cv2.imwrite(jpg, np.zeros((1080, 1920, 3), np.uint8))
    link_images(jpg, [os.path.join(frames, n + ".jpg") for n in names])
    train_ids = list(range(1, 479)) + [480, 481, 482, 483, 932]
    for i, n in enumerate(names):
        train = i < 5704
        pids = [train_ids[(i + j) % len(train_ids)] if train else 1000 + (i + j) % 450 for j in range(3)] + [-2]
        rows = [[p, rng.uniform(-20, 1800), rng.uniform(0, 700), rng.uniform(40, 150), rng.uniform(100, 380)]
                for p in pids]
        scipy.io.savemat(os.path.join(annos, n + ".jpg.mat"), {"box_new": np.asarray(rows)})
    scipy.io.savemat(os.path.join(root, "frame_train.mat"), {"img_index_train": cell(names[:5704])})
    scipy.io.savemat(os.path.join(root, "frame_test.mat"), {"img_index_test": cell(names[5704:])})
    scipy.io.savemat(os.path.join(root, "ID_train.mat"), {"ID_train": np.asarray([train_ids], float)})
    with open(os.path.join(root, "query_info.txt"), "w", newline="") as f:
        for q in range(2057):
            f.write(f"{1000 + q % 450} {-3.5 if q % 50 == 0 else 100 + q % 500} 200 80 240 {names[5704 + q]}\r\n")
    return root


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def cache_vs_pickle(label, root, name, sources):
    """Seconds to read one cache file (a hit: key from the sources' stats + numpy.load) vs the
    former format, a pickle of (key, value) read the same way (our own file, written here)."""
    def fail():
        raise AssertionError(f"{name}: expected a cache hit")

    t_npz, value = timed(lambda: cached_parse(root, name, sources, fail))
    path = os.path.join(root, ".galw_cache", f"{name}.bench-pickle")
    with open(path, "wb") as f:
        pickle.dump((_fingerprint(root, sources), value), f, protocol=pickle.HIGHEST_PROTOCOL)

    def read_pickle():
        key = _fingerprint(root, sources)
        with open(path, "rb") as f:
            stored_key, stored = pickle.load(f)
        assert stored_key == key
        return stored

    t_pkl, _ = timed(read_pickle)
    os.remove(path)
    print(f"{label} cache file read: npz {t_npz:.3f} s, pickle of the same value {t_pkl:.3f} s "
          f"(ratio {t_npz / max(t_pkl, 1e-9):.2f})", flush=True)
    return t_npz, t_pkl


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuhk-gallery-sizes", default="50", help="TestG files to write at full size")
    parser.add_argument("--skip-cuhk", action="store_true")
    parser.add_argument("--skip-prw", action="store_true")
    parser.add_argument("--keep", default=None, help="write the fixtures into this folder and keep them "
                        "(eval_speed.py --cold-root <folder>/CUHK-SYSU parses its TestG100.mat cold)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.cuhk_gallery_sizes.split(",")]
    rng = np.random.default_rng(0)
    rows = []

    def row(dataset, what, seconds, size=""):
        rows.append({"dataset": dataset, "what": what, "seconds": round(seconds, 3), "size": size})

    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        if not args.skip_cuhk:
            t_build, root = timed(lambda: build_cuhk(os.path.join(tmp, "CUHK-SYSU"), sizes, rng))
            print(f"CUHK-SYSU fixture written in {t_build:.1f} s (TestG sizes {sizes})", flush=True)
            t_cold, (train, num_pids) = timed(lambda: CUHKSYSU(root).records("train"))
            nb = sum(len(r["annotations"]) for r in train)
            t_warm, _ = timed(lambda: (CUHKSYSU(root).records("train"), CUHKSYSU(root).records("gallery"),
                                       CUHKSYSU(root).records("query")))
            gallery, _ = CUHKSYSU(root).records("gallery")
            queries, _ = CUHKSYSU(root).records("query")
            nb += sum(len(r["annotations"]) for r in gallery)
            print(f"CUHK-SYSU parse (all splits, cold): {t_cold:.2f} s; {len(train)} train + {len(gallery)} gallery "
                  f"images, {nb} boxes, {num_pids} train ids, {len(queries)} queries", flush=True)
            print(f"CUHK-SYSU load of train+gallery+query from the cache: {t_warm:.2f} s", flush=True)
            row("CUHK-SYSU", "parse, all splits (cold)", t_cold,
                f"{len(train)} train + {len(gallery)} gallery images, {len(queries)} queries")
            row("CUHK-SYSU", "load train+gallery+query from the cache", t_warm)
            for s in sizes:
                t_p, entries = timed(lambda s=s: CUHKSYSU(root).parse_protocol(f"TestG{s}"))
                t_pw, _ = timed(lambda s=s: CUHKSYSU(root).parse_protocol(f"TestG{s}"))
                print(f"CUHK-SYSU protocol TestG{s}: {len(entries)} queries x {len(entries[0]['gallery'])}, "
                      f"cold {t_p:.2f} s, cached {t_pw:.2f} s", flush=True)
                row("CUHK-SYSU", f"protocol TestG{s} (cold)", t_p, f"{len(entries)} queries")
                row("CUHK-SYSU", f"protocol TestG{s} (cached)", t_pw, f"{len(entries)} queries")
            ds = CUHKSYSU(root)
            t_npz, t_pkl = cache_vs_pickle("CUHK-SYSU base", root, "cuhk_sysu_base", ds._existing(ds._base_sources()))
            row("CUHK-SYSU", "base cache file read (npz)", t_npz)
            row("CUHK-SYSU", "base cache as a pickle (comparison)", t_pkl)
            cache_vs_pickle(f"CUHK-SYSU TestG{sizes[-1]}", root, f"cuhk_sysu_TestG{sizes[-1]}",
                            [ds.protocol_path(f"TestG{sizes[-1]}"), ds.protocol_path("TestG50")])
        if not args.skip_prw:
            t_build, root = timed(lambda: build_prw(os.path.join(tmp, "PRW"), rng))
            print(f"PRW fixture written in {t_build:.1f} s", flush=True)
            cold = {s: timed(lambda s=s: PRW(root).records(s)) for s in ("train", "gallery", "query")}
            warm = sum(timed(lambda s=s: PRW(root).records(s))[0] for s in ("train", "gallery", "query"))
            n = {s: len(v[1][0]) for s, v in cold.items()}
            print(f"PRW parse (cold): train {cold['train'][0]:.2f} s ({n['train']} frames), gallery "
                  f"{cold['gallery'][0]:.2f} s ({n['gallery']} frames), query {cold['query'][0]:.2f} s "
                  f"({n['query']} queries); {len(cold['train'][1][1])} train ids", flush=True)
            print(f"PRW load of train+gallery+query from the cache: {warm:.2f} s", flush=True)
            for s in ("train", "gallery", "query"):
                row("PRW", f"parse {s} (cold)", cold[s][0], f"{n[s]} {'queries' if s == 'query' else 'frames'}")
            row("PRW", "load train+gallery+query from the cache", warm)
            ds = PRW(root)
            names = ds._split_names("train")
            sources = [ds._file("frame_train.mat"), ds._file("frame_test.mat"), ds._file("ID_train.mat")] + [
                os.path.join(ds.annotations, n + ".mat") for n in names]
            t_npz, t_pkl = cache_vs_pickle("PRW train", root, "prw_train", sources)
            row("PRW", "train cache file read (npz)", t_npz)
            row("PRW", "train cache as a pickle (comparison)", t_pkl)
    save("data_parse", {"settings": {"CUHK-SYSU gallery sizes": args.cuhk_gallery_sizes,
                                     "CUHK-SYSU": not args.skip_cuhk, "PRW": not args.skip_prw}, "rows": rows})


if __name__ == "__main__":
    main()
