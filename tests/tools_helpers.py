"""The tools' tests: tools/*.py loaded as modules, fake run outputs (metrics.json, galw_groups.json,
search JSONs) and an exported model on a tiny SynthPS gallery."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np

from conftest import ROOT

# s* by hand: two tight pairs and a loner nearer the second pair (average linkage).
S_STAR = {
    "loss_rpn_cls": 0.9,
    "loss_rpn_box": 0.85,
    "loss_nae_det": -0.5,
    "loss_nae_box": -0.45,
    "loss_nae_oim": 0.1,
}
GROUPS = [["loss_rpn_cls", "loss_rpn_box"], ["loss_nae_det", "loss_nae_box"], ["loss_nae_oim"]]
GAMMA_HISTORY = {t: [1.0 + i + 0.5 * e for e in range(4)] for i, t in enumerate(sorted(S_STAR))}
TESTG = {50: 80.0, 100: 76.5, 500: 70.25, 1000: 66.0, 2000: 61.5, 4000: 57.0}


def write_groups_json(run_dir, **overrides):
    data = {
        "groups": GROUPS,
        "num_groups": 3,
        "linkage": "average",
        "slopes": {t: v / 2 for t, v in S_STAR.items()},
        "s_star": S_STAR,
        "gamma_history": GAMMA_HISTORY,
        "iteration": 400,
    }
    data.update(overrides)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "galw_groups.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def write_metrics_json(run_dir, iterations=(19, 39, 59), eval_map=42.0):
    """detectron2-style metrics.json lines with galw scalars and a final eval line."""
    lines = []
    for k, it in enumerate(iterations):
        rec = {"iteration": it, "total_loss": 3.0 - k}
        for g in ("g0", "g1"):
            rec[f"galw/sigma/{g}"] = 1.0 + 0.1 * k + (0.5 if g == "g1" else 0.0)
            rec[f"galw/group_weight/{g}"] = 1.0 / (1.0 + 0.1 * k)
        rec["galw/weight/loss_rpn_cls"] = 0.9 - 0.1 * k
        rec["galw/gamma/loss_rpn_cls"] = 2.0 - 0.5 * k
        rec["galw/gamma/loss_nae_oim"] = 1.0 + 0.25 * k
        lines.append(rec)
    lines.append({"iteration": iterations[-1], "search/mAP": eval_map, "search/top1": eval_map + 10,
                  "detection/AP": 55.0})
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "metrics.json")
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def write_person_images(image_dir, colors, size=(48, 64)):
    """One image per BGR colour (a person-ish block on grey); returns the paths."""
    os.makedirs(image_dir, exist_ok=True)
    paths = []
    w, h = size
    for i, color in enumerate(colors):
        img = np.full((h, w, 3), 90, dtype=np.uint8)
        img[8:56, 12:36] = color
        path = os.path.join(image_dir, f"img_{i:02d}.png")
        cv2.imwrite(path, img)
        paths.append(path)
    return paths


def write_search_json(run_dir, image_paths, dataset="synth_cuhk_gallery", testg=TESTG):
    box = [12, 8, 36, 56]
    queries = []
    for q in range(2):
        top = [
            {"image": p, "box": box, "similarity": round(0.9 - 0.1 * j, 3), "correct": j == q}
            for j, p in enumerate(image_paths[1:])
        ]
        queries.append({"query_image": image_paths[0], "query_box": box, "person_id": q, "ap": 0.5 + q / 4,
                        "count_gt": 1, "top10": top})
    metrics = {"search": {"mAP": 76.5, "top1": 80.0, "top5": 90.0, "top10": 95.0},
               "detection": {"AP": 60.0, "recall": 70.0, "recall_labeled": 75.0}}
    for n, v in testg.items():
        metrics[f"search_TestG{n}"] = {"mAP": v, "top1": v + 5}
    inf = os.path.join(run_dir, "inference")
    os.makedirs(inf, exist_ok=True)
    path = os.path.join(inf, f"search_{dataset}.json")
    with open(path, "w") as f:
        json.dump({"dataset": dataset, "metrics": metrics, "queries": queries}, f)
    return path


def load_tool(name):
    """``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"galw_tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_query_equals_eager_search(search, exported, index_path, query, box, out_dir):
    """tools/search.py ``query`` on an exported model's index gives the eager ``search``'s top-5
    (same images and boxes, similarities within 1e-4)."""
    import pytest

    result = search.main(["query", "--index", str(index_path), "--query-image", query, "--box", *box,
                          "--topk", "5", "--out", str(out_dir / "q")])
    want = search.main(["search", "--config-file", exported["config"], "--weights", exported["weights"],
                        "--gallery", exported["gallery"], "--query-image", query, "--box", *box, "--topk", "5",
                        "--out", str(out_dir / "e")])
    assert [(h["image"], h["box"]) for h in result["topk"]] == [(h["image"], h["box"]) for h in want["topk"]]
    assert [h["similarity"] for h in result["topk"]] == pytest.approx([h["similarity"] for h in want["topk"]], abs=1e-4)


def run_without_project(code, *args, cwd):
    """Run ``code`` in a fresh interpreter that cannot import the project (no PYTHONPATH): what an
    exported model needs at deployment. Fails the test with the child's stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=str(cwd))
    assert proc.returncode == 0, proc.stderr[-2000:]
