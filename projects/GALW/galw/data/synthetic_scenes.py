"""SynthPS's scenes: drawn people whose identity lives in their appearance, rendered into frames.

The drawing half of :mod:`galw.data.synthetic` (which writes the frames in a real layout): an
identity's clothing colours, pattern, build, hair and accessories; frames with occlusion by clutter
and by other people, per-camera background and lighting, and unlabeled passers-by.
"""
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

__all__ = ["ATTRIBUTE_NAMES", "Appearance", "scenes"]

ATTRIBUTE_NAMES = ["hat", "bag", "long_sleeves", "backpack", "skirt"]
PATTERNS = ("solid", "hstripes", "vstripes", "check", "logo")


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


def scenes(rng, size, inside_only, desc):
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
