"""Fixtures in the exact real CUHK-SYSU and PRW layouts (scipy.io.savemat), with the known quirks."""
import os

import cv2
import numpy as np
import scipy.io


from galw.data.matlab import cell_array as cell, struct_array as structs  # noqa: F401  (fixtures)


def box(*xywh):
    return np.asarray([xywh], dtype=np.float64)


EMPTY = np.zeros((1, 0))  # MATLAB's 1x0 empty idlocate


def write_image(path, w, h, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(path, img)


CUHK_IMAGES = {  # name -> boxes [x, y, w, h] as in Images.mat (two degenerate ones)
    "s1.jpg": [(10, 10, 20, 40), (40, 5, 15, 30), (0, 0, 0, 10)],
    "s2.jpg": [(5, 5, 20, 40), (50, 20, 10, -3)],
    "s3.jpg": [(30, 10, 20, 50)],
    "s4.jpg": [(10, 10, 20, 40), (50, 10, 20, 40)],
    "s5.jpg": [(5, 5, 25, 50)],
    "s6.jpg": [(20, 20, 20, 40), (60, 10, 15, 35)],
}
CUHK_POOL = ["s4.jpg", "s5.jpg", "s6.jpg"]


def _query(imname, xywh, idname):
    return structs(("imname", "idlocate", "ishard", "idname"), [(imname, box(*xywh), np.zeros((1, 1)), idname)])


def _gallery(entries):
    return structs(("imname", "idlocate", "ishard"),
                   [(n, EMPTY if b is None else box(*b), np.zeros((1, 1))) for n, b in entries])


CUHK_QUERIES = [  # (query image, query box, gallery entries: positives first)
    ("s4.jpg", (10, 10, 20, 40), [("s5.jpg", (5, 5, 25, 50)), ("s6.jpg", None)]),
    ("s6.jpg", (60, 10, 15, 35), [("s4.jpg", (50, 10, 20, 40)), ("s5.jpg", None)]),
]


def _protocol(queries):
    return structs(("Query", "Gallery"), [(_query(q, b, f"p{10 + i}"), _gallery(g)) for i, (q, b, g) in enumerate(queries)])


CUHK_TRAIN = [  # (idname, scenes (image, box)) as in Train.mat
    ("p1", [("s1.jpg", (10, 10, 20, 40)), ("s2.jpg", (5, 5, 20, 40))]),
    ("p2", [("s1.jpg", (40, 5, 15, 30)), ("s3.jpg", (30, 10, 20, 50))]),
]


def write_cuhk_sysu(root, images=True, boxes=None, train=None, queries=None):
    """CUHK-SYSU fixture: 3 train images, a pool of 3, 2 train identities, 2 queries.

    ``boxes``, ``train`` and ``queries`` replace CUHK_IMAGES, CUHK_TRAIN and CUHK_QUERIES (bad-input cases).
    """
    boxes = CUHK_IMAGES if boxes is None else boxes
    train = CUHK_TRAIN if train is None else train
    queries = CUHK_QUERIES if queries is None else queries
    ann = os.path.join(root, "annotation")
    os.makedirs(os.path.join(ann, "test", "train_test"), exist_ok=True)
    os.makedirs(os.path.join(ann, "test", "subset"), exist_ok=True)
    os.makedirs(os.path.join(root, "Image", "SSM"), exist_ok=True)
    if images:
        for i, name in enumerate(CUHK_IMAGES):
            write_image(os.path.join(root, "Image", "SSM", name), 100, 80, seed=i)
    img = structs(("imname", "nAppear", "box"), [
        (n, np.array([[len(b)]], float), structs(("idlocate", "ishard"), [(box(*x), np.zeros((1, 1))) for x in b]))
        for n, b in boxes.items()])
    scipy.io.savemat(os.path.join(ann, "Images.mat"), {"Img": img})
    scipy.io.savemat(os.path.join(ann, "pool.mat"), {"pool": cell(CUHK_POOL)})
    identities = cell([
        structs(("idname", "nAppear", "scene"), [(idname, np.array([[float(len(scenes))]]), structs(
            ("imname", "idlocate", "ishard"), [(n, box(*b), np.zeros((1, 1))) for n, b in scenes]))])
        for idname, scenes in train])
    scipy.io.savemat(os.path.join(ann, "test", "train_test", "Train.mat"), {"Train": identities})
    for n in (50, 100, 500, 1000, 2000, 4000):
        scipy.io.savemat(os.path.join(ann, "test", "train_test", f"TestG{n}.mat"), {f"TestG{n}": _protocol(queries)})
    scipy.io.savemat(os.path.join(ann, "test", "subset", "Occlusion.mat"), {"Occlusion1": _protocol(queries[1:])})
    scipy.io.savemat(os.path.join(ann, "test", "subset", "Resolution.mat"), {"Test_Size": _protocol(queries[:1])})
    return root


PRW_TRAIN = {  # frame -> (.mat key, rows [pid, x, y, w, h])
    "c1s1_000010": ("box_new", [[5, 10, 10, 20, 40], [-2, 50, 5, 20, 30], [932, -4, 20, 14, 30]]),
    "c2s1_000020": ("anno_file", [[480, 10, 10, 20, 40], [5, 30, 10, 0, 20]]),
    "c3s2_000030": ("anno_previous", [[932, 60, 30, 50, 60]]),
}
PRW_TEST = {
    "c1s1_000040": ("box_new", [[7, -2.5, 10, 22.5, 40], [-2, 40, 10, 20, 40]]),
    "c4s1_000050": ("box_new", [[7, 30, 20, 20, 40], [9, 60, 10, 20, 40]]),
}
PRW_QUERY_INFO = "7 -2.5 10 22.5 40 c1s1_000040\r\n9 60 10 20 40 c4s1_000050\r\n"


def write_prw(root, images=True, train=None, query_info=None):
    """PRW fixture: 3 train frames (ids 5, 480, 932), 2 test frames, 2 queries (CRLF, negative x).

    ``train`` and ``query_info`` replace PRW_TRAIN and PRW_QUERY_INFO (bad-input cases).
    """
    train = PRW_TRAIN if train is None else train
    query_info = PRW_QUERY_INFO if query_info is None else query_info
    os.makedirs(os.path.join(root, "frames"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for i, (name, (key, rows)) in enumerate({**train, **PRW_TEST}.items()):
        if images:
            write_image(os.path.join(root, "frames", name + ".jpg"), 100, 80, seed=i)
        scipy.io.savemat(os.path.join(root, "annotations", name + ".jpg.mat"), {key: np.asarray(rows, float)})
    scipy.io.savemat(os.path.join(root, "frame_train.mat"), {"img_index_train": cell(list(train))})
    scipy.io.savemat(os.path.join(root, "frame_test.mat"), {"img_index_test": cell(list(PRW_TEST))})
    scipy.io.savemat(os.path.join(root, "ID_train.mat"), {"ID_train": np.array([[5.0, 480.0, 932.0]])})
    scipy.io.savemat(os.path.join(root, "ID_test.mat"), {"ID_test2": np.array([[7.0, 9.0]])})
    with open(os.path.join(root, "query_info.txt"), "w", newline="") as f:
        f.write(query_info)
    return root


def register(prefix, kind, root):
    """Register a fixture under a unique prefix; returns a cleanup function."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from galw.data import register_person_search

    register_person_search(prefix, kind, root=str(root))

    def cleanup():
        for s in ("train", "gallery", "query"):
            DatasetCatalog.remove(f"{prefix}_{s}")
            MetadataCatalog.remove(f"{prefix}_{s}")

    return cleanup
