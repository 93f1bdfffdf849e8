"""Top-k search results as a picture (the paper's Fig. 5).

Each row: the query crop (blue border), then the top-k gallery crops with a green
(correct) or red (wrong) border and the similarity above; grey when correctness is
unknown (a search of the user's own images).
"""
import os

import cv2
import numpy as np

from .figures import new_figure, save_figure

BORDER_COLORS = {True: (0, 170, 0), False: (220, 0, 0), None: (128, 128, 128), "query": (30, 90, 220)}
CROP_HEIGHT = 128
BORDER = 6


class _ImageCache:
    def __init__(self, image_root=None):
        self.root = image_root
        self.images = {}

    def get(self, path):
        if path not in self.images:
            full = path if self.root is None or os.path.isabs(path) else os.path.join(self.root, path)
            img = cv2.imread(full, cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"search results: cannot read image {full!r}")
            self.images[path] = img[:, :, ::-1]  # BGR -> RGB
        return self.images[path]


def crop_with_border(image_rgb, box, color, height=CROP_HEIGHT, border=BORDER):
    """The box's crop, resized to ``height``, framed in ``color`` (RGB)."""
    h, w = image_rgb.shape[:2]
    x1, y1, x2, y2 = [float(v) for v in box]
    x1, y1 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
    x2, y2 = int(np.clip(np.ceil(x2), x1 + 1, w)), int(np.clip(np.ceil(y2), y1 + 1, h))
    crop = np.ascontiguousarray(image_rgb[y1:y2, x1:x2])
    width = max(1, int(round(crop.shape[1] * height / crop.shape[0])))
    crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(crop, border, border, border, border, cv2.BORDER_CONSTANT, value=color)


def plot_search_results(queries, out_path, topk=5, image_root=None, title=None):
    """Draw ``queries`` (the search JSON's query entries, or the search tool's) as rows.

    Each entry needs "query_image", "query_box" and a ranked list under "top10" (or
    "topk") of {"image", "box", "similarity", "correct" (bool or None)} and an optional
    "label" printed under the similarity (e.g. a video hit's frame and time). Returns the
    layout drawn: [{"query_image", "hits": [(image, similarity, correct), ...], "titles": [...]}].
    """
    if not queries:
        raise ValueError("plot_search_results: no queries to draw")
    cache = _ImageCache(image_root)
    rows = []
    for q in queries:
        hits = (q["top10"] if "top10" in q else q["topk"])[:topk]
        rows.append({"query_image": q["query_image"], "query_box": q["query_box"], "hits": hits,
                     "ap": q.get("ap")})
    ncols = 1 + max(1, max(len(r["hits"]) for r in rows))
    fig = new_figure(1.6 * ncols, 2.3 * len(rows))
    layout = []
    for r, row in enumerate(rows):
        ax = fig.add_subplot(len(rows), ncols, r * ncols + 1)
        ax.imshow(crop_with_border(cache.get(row["query_image"]), row["query_box"], BORDER_COLORS["query"]))
        label = "query" if row["ap"] is None else f"query  AP {float(row['ap']):.2f}"
        ax.set_title(label, fontsize=8)
        ax.axis("off")
        drawn, titles = [], []
        for c, hit in enumerate(row["hits"]):
            correct = hit.get("correct")
            ax = fig.add_subplot(len(rows), ncols, r * ncols + 2 + c)
            ax.imshow(crop_with_border(cache.get(hit["image"]), hit["box"], BORDER_COLORS[correct]))
            titles.append(f"{float(hit['similarity']):.3f}" + (f"\n{hit['label']}" if hit.get("label") else ""))
            ax.set_title(titles[-1], fontsize=8)
            ax.axis("off")
            drawn.append((hit["image"], float(hit["similarity"]), correct))
        layout.append({"query_image": row["query_image"], "hits": drawn, "titles": titles})
    if title:
        fig.suptitle(title)
    save_figure(fig, out_path)
    return layout
