"""tools/search.py and galw.search rank gallery people by a fake model whose embeddings are known by hand."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

import galw
from galw import search
from galw.search import query as search_query
from conftest import ROOT, write_video

_spec = importlib.util.spec_from_file_location("galw_tools_search", os.path.join(ROOT, "tools", "search.py"))
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

FAKE_ARCH = "_GalwToolsFakeSearchNet"


class _GalwToolsFakeSearchNet(nn.Module):
    """Eval contract with hand-checkable embeddings.

    Detections: left half (score 0.9), right half (0.8) and whole image (0.1) of each
    image. Embedding of a region = normalise(colour at the region's centre pixel of the
    resized BGR image * channel_weight); channel_weight comes from the checkpoint.
    """

    def __init__(self, cfg):
        super().__init__()
        self.channel_weight = nn.Parameter(torch.ones(3))

    def _embed(self, image, box):
        x = int((box[0] + box[2]) / 2)
        y = int((box[1] + box[3]) / 2)
        v = image[:, y, x].float() * self.channel_weight
        return v / v.norm()

    def forward(self, batched_inputs):
        assert not self.training
        outputs = []
        for inp in batched_inputs:
            img = inp["image"]
            assert img.dtype == torch.uint8 and img.shape[0] == 3
            H, W = img.shape[1:]
            boxes = torch.tensor([[0, 0, W / 2, H], [W / 2, 0, W, H], [0, 0, W, H]], dtype=torch.float32)
            emb = torch.stack([self._embed(img, b.tolist()) for b in boxes])
            scale = torch.tensor([inp["width"] / W, inp["height"] / H] * 2)
            inst = Instances((inp["height"], inp["width"]))
            inst.pred_boxes = Boxes(boxes * scale)
            inst.scores = torch.tensor([0.9, 0.8, 0.1])
            inst.embeddings = emb
            out = {"instances": inst}
            if "query_instances" in inp:
                qbox = inp["query_instances"].gt_boxes.tensor[0].tolist()
                out["query_embedding"] = self._embed(img, qbox)
            outputs.append(out)
        return outputs


if FAKE_ARCH not in META_ARCH_REGISTRY:  # a test-only name, registered once per process
    META_ARCH_REGISTRY.register(_GalwToolsFakeSearchNet)

# BGR colours of (left, right) halves. After the checkpoint's weight [1, 1, 0] (red dropped)
# the query colour (200, 100, 0) points along (2, 1); cosine similarities by hand:
# b.right (200,100)->1.000, c.right (100,20)->11/sqrt(130)=0.9648, b.left (100,100)->3/sqrt(10)=0.9487,
# a.left (200,0)->2/sqrt(5)=0.8944, c.left (50,200)->6/sqrt(85)=0.6508, a.right (0,200)->1/sqrt(5)=0.4472.
GALLERY = {"a": ((200, 0, 50), (0, 200, 0)), "b": ((100, 100, 250), (200, 100, 0)),
           "c": ((50, 200, 0), (100, 20, 200))}
QUERY_COLOR = (200, 100, 0)
EXPECTED = [("b", "right", 1.0), ("c", "right", 11 / np.sqrt(130)), ("b", "left", 3 / np.sqrt(10)),
            ("a", "left", 2 / np.sqrt(5)), ("c", "left", 6 / np.sqrt(85)), ("a", "right", 1 / np.sqrt(5))]
BOXES = {"left": [0.0, 0.0, 20.0, 20.0], "right": [20.0, 0.0, 40.0, 20.0]}


def _two_colour_image(path, left, right):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20] = left
    img[:, 20:] = right
    cv2.imwrite(path, img)


@pytest.fixture
def setup(tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name, (left, right) in GALLERY.items():
        _two_colour_image(str(gallery / f"{name}.png"), left, right)
    (gallery / "notes.txt").write_text("not an image")
    query = str(tmp_path / "query.png")
    _two_colour_image(query, QUERY_COLOR, (0, 0, 0))
    cfg_path = tmp_path / "fake.yaml"
    cfg_path.write_text(
        f"MODEL:\n  META_ARCHITECTURE: {FAKE_ARCH}\n  DEVICE: cpu\n"
        "INPUT:\n  PS:\n    TEST_SHORT_SIDE: 10\n    TEST_LONG_SIDE: 100\n"
    )
    weights = str(tmp_path / "model.pth")
    torch.save({"model": {"channel_weight": torch.tensor([1.0, 1.0, 0.0])}}, weights)
    return {"gallery": str(gallery), "query": query, "config": str(cfg_path), "weights": weights, "tmp": tmp_path}


def _check_topk(result, gallery, k):
    got = [(os.path.basename(h["image"]), h["box"], h["similarity"]) for h in result["topk"]]
    want = [(f"{n}.png", BOXES[side], s) for n, side, s in EXPECTED[:k]]
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-5)
    assert [h["rank"] for h in result["topk"]] == list(range(1, k + 1))
    assert all(h["score"] in (pytest.approx(0.9), pytest.approx(0.8)) for h in result["topk"])
    assert result["num_gallery_images"] == 3
    assert result["num_detections"] == 6  # whole-image boxes (score 0.1) below 0.5 dropped
    assert result["gallery_dir"] == os.path.abspath(gallery)


def test_direct_search_ranks_by_hand_similarities(setup):
    out = str(setup["tmp"] / "direct")
    result = tool.main(["search", "--config-file", setup["config"], "--weights", setup["weights"],
                          "--gallery", setup["gallery"], "--query-image", setup["query"],
                          "--box", "0", "0", "20", "20", "--topk", "4", "--out", out])
    _check_topk(result, setup["gallery"], 4)
    with open(os.path.join(out, "topk.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert saved["query_box"] == [0.0, 0.0, 20.0, 20.0] and saved["index"] is None
    assert os.path.getsize(os.path.join(out, "topk.png")) > 5000


def test_index_then_query_gives_the_same_ranking(setup):
    index_path = str(setup["tmp"] / "idx" / "index.pt")
    index = tool.main(["index", "--config-file", setup["config"], "--weights", setup["weights"],
                         "--gallery", setup["gallery"], "--out", index_path])
    saved = search.load_index(index_path)
    assert saved["config_file"] == os.path.abspath(setup["config"])
    assert saved["weights"] == os.path.abspath(setup["weights"])
    assert [os.path.basename(p) for p in saved["images"]] == ["a.png", "b.png", "c.png"]
    assert saved["image_index"].tolist() == [0, 0, 1, 1, 2, 2]
    assert saved["boxes"].tolist() == [BOXES["left"], BOXES["right"]] * 3
    assert saved["embeddings"].shape == (6, 3)
    assert torch.equal(saved["embeddings"], index["embeddings"])
    model = search.load_search_model(saved)  # the index's own fields name its model
    assert isinstance(model, search.SearchModel) and model.config_file == saved["config_file"]
    assert model.model.channel_weight.tolist() == [1.0, 1.0, 0.0]
    out = str(setup["tmp"] / "q")
    result = tool.main(["query", "--index", index_path, "--query-image", setup["query"],
                          "--box", "0", "0", "20", "20", "--topk", "6", "--out", out])
    _check_topk(result, setup["gallery"], 6)
    assert result["index"] == os.path.abspath(index_path)
    assert os.path.isfile(os.path.join(out, "topk.png"))


def test_model_source_resolves_command_and_index():
    """What a command names wins over what the index stored, field by field; --exported excludes
    the config, weights and overrides; the tool turns a bad combination into its exit message."""
    stored = {"config_file": "/i/c.yaml", "weights": "/i/w.pth", "opts": ["A", "1"]}
    assert search.model_source(stored=stored) == stored
    assert search.model_source("c.yaml", stored=stored) == dict(stored, config_file="c.yaml")
    assert search.model_source(opts=["B", "2"], stored=stored) == dict(stored, opts=["B", "2"])
    exported = {"exported": "/e", "exported_format": "onnx"}
    assert search.model_source(stored=exported) == exported
    assert search.model_source(exported_format="torchscript", stored=exported) == dict(exported,
                                                                                      exported_format="torchscript")
    assert search.model_source(exported="x") == {"exported": "x", "exported_format": None}
    with pytest.raises(ValueError, match="--exported replaces --config-file"):
        search.model_source("c", "w", exported="x")
    with pytest.raises(ValueError, match="--exported-format goes with --exported"):
        search.model_source("c", "w", exported_format="onnx")
    with pytest.raises(ValueError, match="give --config-file and --weights, or --exported"):
        search.model_source("c", stored=exported)
    with pytest.raises(SystemExit, match="give --config-file and --weights, or --exported"):
        tool.main(["index", "--config-file", "c.yaml", "--gallery", "g", "--out", "o.pt"])


def test_weights_are_loaded(setup):
    """Without the checkpoint's [1, 1, 0] the red channel would change the ranking."""
    model = search.SearchModel(setup["config"], setup["weights"])
    assert model.model.channel_weight.tolist() == [1.0, 1.0, 0.0]


def test_bad_inputs_raise_clear_errors(setup, tmp_path):
    model = search.SearchModel(setup["config"], setup["weights"])
    with pytest.raises(ValueError, match="query box"):
        model.embed_query(setup["query"], [0, 0, 50, 20])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        search.build_index(model, str(empty))
    with pytest.raises(FileNotFoundError, match="weights"):
        search.SearchModel(setup["config"], str(tmp_path / "missing.pth"))
    bogus = tmp_path / "bogus.pt"
    torch.save({"x": 1}, bogus)
    with pytest.raises(ValueError, match="not a search index"):
        search.load_index(str(bogus))
    index = search.build_index(model, setup["gallery"])
    with pytest.raises(ValueError, match="dims"):
        search.rank(index, torch.ones(5), 3)


def test_resize_reads_the_data_keys():
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    assert search.inference_resize_sizes(cfg) == (900, 1500)
    cfg.INPUT.PS.TEST_SHORT_SIDE, cfg.INPUT.PS.TEST_LONG_SIDE = 240, 320
    assert search.inference_resize_sizes(cfg) == (240, 320)


def test_resize_fits_both_bounds():
    """(w x h) at bounds (900, 1500): 3000x1000 -> 1500x500 (the long side binds);
    1000x1200 -> 900x1080 (the short side binds)."""
    from detectron2.data import transforms as T

    aug = T.ResizeShortestEdge([900, 900], 1500)
    assert aug.get_transform(np.zeros((1000, 3000, 3), np.uint8)).apply_image(
        np.zeros((1000, 3000, 3), np.uint8)).shape[:2] == (500, 1500)
    assert aug.get_transform(np.zeros((1200, 1000, 3), np.uint8)).apply_image(
        np.zeros((1200, 1000, 3), np.uint8)).shape[:2] == (1080, 900)


def test_score_threshold_defaults_to_the_configs(setup):
    """--score-thresh mirrors TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH: the config's 0.05 keeps the
    whole-image boxes (score 0.1) too; an override in opts or on the command line wins."""
    cfg_path = setup["tmp"] / "low_thresh.yaml"
    cfg_path.write_text(open(setup["config"]).read() + "TEST:\n  PERSON_SEARCH:\n    SEARCH_SCORE_THRESH: 0.05\n")
    common = ["index", "--config-file", str(cfg_path), "--weights", setup["weights"], "--gallery", setup["gallery"]]
    index = tool.main(common + ["--out", str(setup["tmp"] / "a.pt")])
    assert index["score_thresh"] == pytest.approx(0.05)
    assert sorted(index["scores"].tolist()) == pytest.approx([0.1] * 3 + [0.8] * 3 + [0.9] * 3)
    index = tool.main(common + ["--out", str(setup["tmp"] / "b.pt"), "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", "0.85"])
    assert index["score_thresh"] == pytest.approx(0.85) and index["scores"].tolist() == pytest.approx([0.9] * 3)
    index = tool.main(common + ["--score-thresh", "0.75", "--out", str(setup["tmp"] / "c.pt")])
    assert index["score_thresh"] == pytest.approx(0.75) and len(index["scores"]) == 6
    parser = tool.build_parser()
    for command in ("search", "index"):
        assert parser.parse_args([command, "--config-file", "c", "--weights", "w", "--gallery", "g", "--out", "o"]
                                 + (["--query-image", "q", "--box", "0", "0", "1", "1"] if command == "search" else [])
                                 ).score_thresh is None  # None = the config's value


class _PlantedCode:
    """Unpickling this creates the file ``marker`` (it would run any code the same way)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_index_loading_runs_no_code(setup, tmp_path):
    marker = tmp_path / "code_ran"
    planted = tmp_path / "planted.pt"
    index = search.build_index(search.SearchModel(setup["config"], setup["weights"]), setup["gallery"])
    index["boxes_note"] = _PlantedCode(str(marker))
    torch.save(index, planted)
    torch.load(planted, weights_only=False)  # the old loader: the planted object runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="planted.pt.*not a search index"):
        search.load_index(str(planted))
    assert not marker.exists()


def _decoded(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def _fake_similarity(query, frame, half):
    """The fake net's cosine similarity (channel weight [1, 1, 0], centre pixel of each half)."""
    h, w = frame.shape[:2]
    xs = {"left": int(w / 4), "right": int((w / 2 + w) / 2)}
    q = query[h // 2, int(w / 4)].astype(np.float64) * [1, 1, 0]
    g = frame[h // 2, xs[half]].astype(np.float64) * [1, 1, 0]
    return float(q @ g / np.linalg.norm(q) / np.linalg.norm(g))


def test_video_gallery_reports_frames_and_times(setup, tmp_path, monkeypatch):
    """A folder of two MJPG videos of SynthPS frames: a.avi 8 frames at 4 fps, b.avi 4 frames at 2 fps.
    At --sample-fps 2: a's frames 0, 2, 4, 6 (0, 0.5, 1, 1.5 s) and all of b's; each hit carries its
    video, frame index and time; the ranking equals the fake net's similarities on the decoded frames."""
    from galw.data.synthetic import generate

    generate("prw", str(tmp_path / "synth"), seed=0, size="tiny")
    names = sorted(os.listdir(tmp_path / "synth" / "frames"))[:12]
    frames = [cv2.imread(str(tmp_path / "synth" / "frames" / n)) for n in names]
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.avi", frames[:8], 4)
    write_video(videos / "b.avi", frames[8:], 2)
    decoded = {"a.avi": _decoded(videos / "a.avi"), "b.avi": _decoded(videos / "b.avi")}
    assert [len(v) for v in decoded.values()] == [8, 4]
    query = str(tmp_path / "query.png")
    cv2.imwrite(query, decoded["a.avi"][6])  # lossless: the query person is a's frame 6, left half
    cfg = tmp_path / "native.yaml"
    cfg.write_text(open(setup["config"]).read().replace("TEST_SHORT_SIDE: 10", "TEST_SHORT_SIDE: 144")
                   .replace("TEST_LONG_SIDE: 100", "TEST_LONG_SIDE: 192"))
    drawn = []
    original_plot = search_query.plot_search_results
    monkeypatch.setattr(search_query, "plot_search_results",
                        lambda queries, *a, **k: drawn.append(original_plot(queries, *a, **k)))
    out = tmp_path / "out"
    result = tool.main(["search", "--config-file", str(cfg), "--weights", setup["weights"],
                          "--gallery", str(videos), "--sample-fps", "2", "--query-image", query,
                          "--box", "0", "0", "96", "144", "--topk", "16", "--out", str(out)])
    assert result["num_gallery_images"] == 8 and result["num_detections"] == 16
    sampled = {("a.avi", f): f / 4 for f in (0, 2, 4, 6)} | {("b.avi", f): f / 2 for f in range(4)}
    got = [(os.path.basename(h["video"]), h["frame"]) for h in result["topk"]]
    assert set(got) == set(sampled)
    for hit in result["topk"]:
        key = (os.path.basename(hit["video"]), hit["frame"])
        assert hit["time"] == pytest.approx(sampled[key])
        half = "left" if hit["box"][0] == 0 else "right"
        want = _fake_similarity(decoded["a.avi"][6], decoded[key[0]][key[1]], half)
        assert hit["similarity"] == pytest.approx(want, abs=1e-5)
        assert hit["label"] == f"{key[0]} frame {key[1]}, {search.timestamp(sampled[key])}"
    top = result["topk"][0]
    assert (os.path.basename(top["video"]), top["frame"], top["box"]) == ("a.avi", 6, [0.0, 0.0, 96.0, 144.0])
    assert top["similarity"] == pytest.approx(1.0, abs=1e-6) and top["timestamp"] == "0:00:01.500"
    assert drawn[0][0]["titles"][0] == "1.000\na.avi frame 6, 0:00:01.500"
    frame_file = drawn[0][0]["hits"][0][0]
    assert np.array_equal(cv2.imread(frame_file), decoded["a.avi"][6])  # the picture shows that frame
    assert os.path.getsize(out / "topk.png") > 5000
    # a single video file; the index keeps frames and times for the query command
    index_path = str(tmp_path / "video_index.pt")
    index = tool.main(["index", "--config-file", str(cfg), "--weights", setup["weights"],
                         "--gallery", str(videos / "b.avi"), "--sample-fps", "0", "--out", index_path])
    assert index["frames"] == [0, 1, 2, 3] and index["times"] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    again = tool.main(["query", "--index", index_path, "--query-image", query, "--box", "0", "0", "96", "144",
                         "--topk", "2", "--out", str(tmp_path / "q")])
    assert all(os.path.basename(h["video"]) == "b.avi" and h["frame"] in range(4) for h in again["topk"])


def test_video_sampling_and_timestamps():
    assert search.timestamp(3725.25) == "1:02:05.250"
    def sampled(n, fps, sample_fps):
        return [i for i in range(n) if search.starts_sample(i, fps, sample_fps)]

    assert sampled(10, fps=4, sample_fps=1) == [0, 4, 8]
    assert sampled(6, fps=25, sample_fps=0) == list(range(6))  # 0 = every frame
    assert sampled(7, fps=3, sample_fps=2) == [0, 2, 3, 5, 6]  # times 0, 2/3, 1, 5/3, 2 start half-seconds
    assert sampled(5, fps=2, sample_fps=10) == list(range(5))  # faster than the video: every frame
