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
from tqdm import tqdm

from .matlab import cell_array, savemat_deterministic, struct_array


__all__ = ["ATTRIBUTE_NAMES", "SIZES", "generate"]

ATTRIBUTE_NAMES = ["hat", "bag", "long_sleeves", "backpack", "skirt"]
PATTERNS = ("solid", "hstripes", "vstripes", "check", "logo")


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


@dataclass
class Appearance:
    shirt: np.ndarray
    pattern: str
    pattern_color: np.ndarray
    pants: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    accessory: np.ndarray  # hat / bag / backpack colour
    build: float  # box width / height
    leg: float  # leg length / height
    attributes: tuple  # 0/1 per ATTRIBUTE_NAMES


def _color(rng, sat=(0.45, 1.0), val=(0.35, 1.0)):
    hsv = np.uint8([[[rng.integers(0, 180), int(255 * rng.uniform(*sat)), int(255 * rng.uniform(*val))]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)


def _appearance(rng):
    attrs = (int(rng.random() < 0.3), int(rng.random() < 0.3), int(rng.random() < 0.5),
             int(rng.random() < 0.25), int(rng.random() < 0.2))
    skin = np.array([rng.uniform(60, 170), rng.uniform(100, 190), rng.uniform(140, 235)])
    return Appearance(
        shirt=_color(rng), pattern=PATTERNS[rng.integers(len(PATTERNS))], pattern_color=_color(rng),
        pants=_color(rng, sat=(0.1, 0.9), val=(0.15, 0.8)), skin=skin,
        hair=_color(rng, sat=(0.0, 0.6), val=(0.05, 0.45)), accessory=_color(rng),
        build=float(rng.uniform(0.34, 0.46)), leg=float(rng.uniform(0.42, 0.52)), attributes=attrs)


def _draw_person(img, x1, y1, h, app, rng, light):
    """Draw one person with its top-left at (x1, y1) and height h; returns the box width."""
    w = h * app.build
    facing = 1 if rng.random() < 0.5 else -1
    stride = rng.uniform(0.0, 0.3) * w
    swing = rng.uniform(-0.15, 0.15) * w
    c = lambda col: tuple(float(v) for v in np.clip(col * light * rng.uniform(0.92, 1.08, 3), 0, 255))
    p = lambda x, y: (int(round(x)), int(round(y)))
    th = lambda t: max(1, int(round(t)))
    cx = x1 + w / 2
    head_r = 0.075 * h
    head_y = y1 + head_r + 0.01 * h
    shoulder_y = y1 + 0.19 * h
    hip_y = y1 + (1 - app.leg) * h
    torso_w = 0.62 * w
    tl, br = p(cx - torso_w / 2, shoulder_y), p(cx + torso_w / 2, hip_y)
    hat, bag, long_sleeves, backpack, skirt = app.attributes
    if backpack:
        bx = cx - facing * 0.28 * w
        cv2.rectangle(img, p(bx - 0.2 * w, shoulder_y + 0.02 * h), p(bx + 0.2 * w, hip_y - 0.06 * h),
                      c(app.accessory), -1, cv2.LINE_AA)
    # legs (or skirt with bare legs)
    leg_col = c(app.skin) if skirt else c(app.pants)
    for s in (-1, 1):
        cv2.line(img, p(cx + s * 0.12 * w, hip_y), p(cx + s * (0.12 * w + stride), y1 + h - 0.02 * h),
                 leg_col, th(0.17 * w), cv2.LINE_AA)
    if skirt:
        pts = np.array([p(cx - torso_w / 2, hip_y - 0.02 * h), p(cx + torso_w / 2, hip_y - 0.02 * h),
                        p(cx + 0.7 * w, hip_y + 0.2 * h), p(cx - 0.7 * w, hip_y + 0.2 * h)], np.int32)
        pts[:, 0] = np.clip(pts[:, 0], int(x1), int(x1 + w))
        cv2.fillConvexPoly(img, pts, c(app.pants), cv2.LINE_AA)
    # torso with pattern
    cv2.rectangle(img, tl, br, c(app.shirt), -1, cv2.LINE_AA)
    period = max(2, int(0.05 * h))
    if app.pattern in ("hstripes", "check"):
        for y in range(tl[1], br[1], 2 * period):
            cv2.rectangle(img, (tl[0], y), (br[0], min(br[1], y + period - 1)), c(app.pattern_color), -1)
    if app.pattern in ("vstripes", "check"):
        for x in range(tl[0], br[0], 2 * period):
            cv2.rectangle(img, (x, tl[1]), (min(br[0], x + period - 1), br[1]), c(app.pattern_color), -1)
    if app.pattern == "logo":
        cv2.circle(img, p(cx, (shoulder_y + hip_y) / 2), th(0.16 * w), c(app.pattern_color), -1, cv2.LINE_AA)
    if backpack:
        for s in (-1, 1):
            cv2.line(img, p(cx + s * 0.18 * w, shoulder_y), p(cx + s * 0.18 * w, hip_y - 0.08 * h), (30, 30, 30),
                     th(0.04 * w))
    # arms
    for s in (-1, 1):
        sh = (cx + s * (torso_w / 2 + 0.05 * w), shoulder_y + 0.02 * h)
        hand = (cx + s * (torso_w / 2 + 0.1 * w) + s * swing * 0.3 + swing, hip_y + 0.04 * h)
        elbow = ((sh[0] + hand[0]) / 2, (sh[1] + hand[1]) / 2)
        cv2.line(img, p(*sh), p(*elbow), c(app.shirt), th(0.12 * w), cv2.LINE_AA)
        cv2.line(img, p(*elbow), p(*hand), c(app.shirt if long_sleeves else app.skin), th(0.11 * w), cv2.LINE_AA)
    if bag:
        bx = cx + facing * 0.42 * w
        cv2.line(img, p(cx - facing * 0.25 * w, shoulder_y), p(bx, hip_y - 0.02 * h), (40, 40, 40), th(0.03 * w))
        cv2.rectangle(img, p(bx - 0.12 * w, hip_y - 0.06 * h), p(bx + 0.08 * w, hip_y + 0.07 * h),
                      c(app.accessory), -1, cv2.LINE_AA)
    # head, hair, hat
    cv2.circle(img, p(cx, head_y), th(head_r), c(app.skin), -1, cv2.LINE_AA)
    cv2.ellipse(img, p(cx, head_y - 0.2 * head_r), (th(head_r), th(0.8 * head_r)), 0, 180, 360, c(app.hair), -1,
                cv2.LINE_AA)
    if hat:
        cv2.rectangle(img, p(cx - head_r, y1), p(cx + head_r, head_y - 0.3 * head_r), c(app.accessory), -1)
        cv2.line(img, p(cx - head_r * 1.1 + facing * 0.4 * head_r, head_y - 0.3 * head_r),
                 p(cx + head_r * 1.1 + facing * 0.4 * head_r, head_y - 0.3 * head_r), c(app.accessory * 0.7),
                 th(0.025 * h))
    return w


def _background(rng, W, H, cam_colors):
    wall, ground = cam_colors
    img = np.empty((H, W, 3), np.float64)
    horizon = int(H * rng.uniform(0.3, 0.45))
    img[:horizon] = wall * rng.uniform(0.9, 1.1)
    ramp = np.linspace(0.8, 1.15, H - horizon)[:, None, None]
    img[horizon:] = ground * ramp
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):  # background clutter: windows, signs, trees
        x, y = int(rng.integers(0, W)), int(rng.integers(0, horizon + 10))
        col = tuple(float(v) for v in _color(rng, sat=(0.0, 0.7)))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 50)), y + int(rng.integers(8, 40))), col, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(4, 20)), col, -1, cv2.LINE_AA)
    return img, horizon


def _render_frame(rng, size, people, cam_colors, cam_light, inside_only):
    """Draw a frame; ``people`` = [(pid, Appearance)]; returns image and [(pid, xyxy, occlusion, attrs)]."""
    W, H = size.width, size.height
    img, horizon = _background(rng, W, H, cam_colors)
    light = cam_light * rng.uniform(0.8, 1.2)
    placed = []
    slots = rng.permutation(len(people))  # one horizontal slot each: overlaps stay partial
    for (pid, app), slot in zip(people, slots):
        foot = rng.uniform(horizon + 0.25 * (H - horizon), H * 1.02)
        h = (0.28 + 0.55 * (foot - horizon) / (H - horizon)) * H * rng.uniform(0.9, 1.1)
        w = h * app.build
        lo, hi = (0.0, W - w) if inside_only else (-0.25 * w, W - 0.75 * w)
        x1 = min(max((slot + rng.uniform(0.15, 0.85)) * W / len(people) - w / 2, lo), max(lo, hi))
        y1 = min(foot, H if not inside_only else H - 1) - h
        if inside_only:
            y1 = max(0.0, y1)
        placed.append((foot, pid, app, x1, y1, h))
    placed.sort(key=lambda t: t[0])  # far people first: near ones occlude them
    out, masks = [], []
    for _foot, pid, app, x1, y1, h in placed:
        w = _draw_person(img, x1, y1, h, app, rng, light * rng.uniform(0.85, 1.15))
        out.append([pid, [x1, y1, x1 + w, y1 + h], app.attributes])
        masks.append((x1, y1, x1 + w, y1 + h))
    occluders = []
    for _ in range(int(rng.integers(0, 3))):  # foreground clutter: poles, bins, bushes
        col = tuple(float(v) for v in _color(rng, sat=(0.0, 0.5), val=(0.2, 0.7)))
        x = rng.uniform(0, W)
        if rng.random() < 0.5:
            bw, top = rng.uniform(4, 10), rng.uniform(0, H * 0.5)
            box = (x, top, x + bw, H)
        else:
            bw, bh = rng.uniform(25, 60), rng.uniform(20, 45)
            y = rng.uniform(horizon + 10, H)
            box = (x, y - bh, x + bw, y)
        cv2.rectangle(img, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), col, -1)
        occluders.append(box)
    gain = light * rng.uniform(0.9, 1.1, 3)
    noise = rng.normal(0, 4, img.shape)
    img = np.clip(img * gain + noise, 0, 255).astype(np.uint8)
    results = []
    for i, (pid, box, attrs) in enumerate(out):
        covers = [masks[j] for j in range(i + 1, len(masks))] + occluders
        results.append((pid, box, _occlusion(box, covers, W, H), attrs))
    return img, results


def _occlusion(box, covers, W, H, grid=12):
    """Fraction of the box hidden by the covering boxes or outside the image (on a grid)."""
    xs = np.linspace(box[0], box[2], grid)
    ys = np.linspace(box[1], box[3], grid)
    gx, gy = np.meshgrid(xs, ys)
    hidden = (gx < 0) | (gx >= W) | (gy < 0) | (gy >= H)
    for c in covers:
        hidden |= (gx >= c[0]) & (gx <= c[2]) & (gy >= c[1]) & (gy <= c[3])
    return float(hidden.mean())


def _scenes(rng, size, inside_only, desc):
    """Yield (split, camera, image, persons) for every frame; identities: train 0.., test 0.. per split."""
    ids = {"train": [_appearance(rng) for _ in range(size.train_ids)],
           "test": [_appearance(rng) for _ in range(size.test_ids)]}
    cams = [(_color(rng, sat=(0.05, 0.4), val=(0.4, 0.85)), _color(rng, sat=(0.0, 0.3), val=(0.25, 0.6)))
            for _ in range(size.cameras)]
    cam_light = rng.uniform(0.75, 1.2, size.cameras)
    plan = [("train", i) for i in range(size.train_frames)] + [("test", i) for i in range(size.test_frames)]
    for split, i in tqdm(plan, desc=desc, leave=False):
        pool = ids[split]
        # every identity is guaranteed to appear at least twice (cycling), then random others join
        k = int(rng.integers(2, min(4, len(pool)) + 1))
        first = (2 * i) % len(pool)
        chosen = {first, (first + 1) % len(pool)}
        chosen |= set(rng.choice(len(pool), size=k, replace=False).tolist())
        people = [(pid, pool[pid]) for pid in sorted(chosen)][:4]
        people += [(-1, _appearance(rng)) for _ in range(int(rng.integers(0, 3)))]
        cam = int(rng.integers(size.cameras))
        img, persons = _render_frame(rng, size, people, cams[cam], cam_light[cam], inside_only)
        yield split, cam, img, persons


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
    for n, (split, cam, img, persons) in enumerate(_scenes(rng, size, False, "SynthPS-PRW")):
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
    for n, (split, _cam, img, persons) in enumerate(_scenes(rng, size, True, "SynthPS-CUHK")):
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
