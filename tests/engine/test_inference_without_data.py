"""A config and a weights file are enough for inference: on a machine without datasets
($DETECTRON2_DATASETS an empty folder, a fresh process) detectron2's ``DefaultPredictor`` and the
``--eval-only`` model building load a checkpoint whose OIM lookup-table size came from the train set,
and give the same boxes, scores and embeddings as the model that wrote it; tools/search.py indexes
images and a video with it."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import galw
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from conftest import CONFIG_DIR, ROOT, write_video

#: NAE R-18 shrunk; tiny SynthPS frames are 192x144, tested at that size (INPUT.PS; config loading
#: gives DefaultPredictor's INPUT.{MIN,MAX}_SIZE_TEST the same, galw.config.sync_test_size).
TINY = [
    "MODEL.NAE.EMBEDDING_DIM", 32, "MODEL.OIM.QUEUE_SIZE", 8, "MODEL.RPN.POST_NMS_TOPK_TEST", 30,
    "INPUT.PS.TEST_SHORT_SIDE", 144, "INPUT.PS.TEST_LONG_SIDE", 192, "INPUT.MIN_SIZE_TEST", 144,
    "INPUT.MAX_SIZE_TEST", 192, "SEED", 0,
]

#: Run in a fresh process: the metadata of the parent's loads must not help.
_CHILD = r"""
import importlib.util, json, os, sys
import cv2, torch
import galw
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from galw.engine import Trainer

config, weights, image, root = sys.argv[1:5]
cfg = get_cfg()
galw.add_galw_config(cfg)
cfg.merge_from_file(config)
cfg.MODEL.WEIGHTS = weights
inst = DefaultPredictor(cfg)(cv2.imread(image))["instances"]
model = Trainer.build_model(cfg)  # what train_net.py --eval-only does before testing
DetectionCheckpointer(model).resume_or_load(weights, resume=False)
lut = [v for k, v in model.state_dict().items() if k.endswith("oim.lookup_table")]
spec = importlib.util.spec_from_file_location("search_tool", os.path.join(root, "tools", "search.py"))
search = importlib.util.module_from_spec(spec)
spec.loader.exec_module(search)
search_model = search.SearchModel(config, weights)
index = search.build_index(search_model, os.path.dirname(image), score_thresh=0.0)
# A video gallery: every frame indexed with its frame number; the same as its decoded frames as PNG files.
video, decoded_dir = sys.argv[5:7]
video_index = search.build_index(search_model, video, score_thresh=0.0, sample_fps=0)
cap = cv2.VideoCapture(video)
os.makedirs(decoded_dir)
for n in range(100):
    ok, frame = cap.read()
    if not ok:
        break
    cv2.imwrite(os.path.join(decoded_dir, f"{n:03d}.png"), frame)
frames_index = search.build_index(search_model, decoded_dir, score_thresh=0.0)
print(json.dumps({
    "video_frames": video_index["frames"], "video_times": video_index["times"],
    "video_image_index": video_index["image_index"].tolist(), "frames_image_index": frames_index["image_index"].tolist(),
    "video_embeddings": video_index["embeddings"].tolist(), "frames_embeddings": frames_index["embeddings"].tolist(),
    "search_index_embeddings": index["embeddings"].tolist(),
    "search_index_scores": index["scores"].tolist(),
    "boxes": inst.pred_boxes.tensor.tolist(), "scores": inst.scores.tolist(),
    "embeddings": inst.embeddings.tolist(), "eval_only_lookup_table": [t.tolist() for t in lut],
}))
"""


def _tiny_cfg(config="nae/nae_R18_synth_cpu.yaml", *opts):
    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config))
    cfg.merge_from_list(TINY + list(opts))
    return cfg


@pytest.fixture(scope="module")
def trained(synthps_tiny, tmp_path_factory):
    """A model built with SynthPS-PRW present (5 train identities), its 'trained' lookup table
    written by hand, saved with its config; then the datasets are gone (for the module's tests)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _save_trained(synthps_tiny("prw"), tmp_path_factory.mktemp("trained"), monkeypatch)


def _save_trained(data, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data))
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    model = build_model(cfg)
    table = [v for k, v in model.state_dict().items() if k.endswith("oim.lookup_table")]
    assert [tuple(t.shape) for t in table] == [(5, 32)]  # the train set's num_pids
    table[0].copy_(torch.nn.functional.normalize(torch.randn(5, 32), dim=1))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    config = tmp_path / "config.yaml"
    # as the shipped R-50 configs: an ImageNet init file the deployment machine does not have
    config.write_text(cfg.dump().replace('PRETRAINED: ""', "PRETRAINED: pretrained/R-50.pkl").replace(
        "PRETRAINED: ''", "PRETRAINED: pretrained/R-50.pkl"))
    assert "pretrained/R-50.pkl" in config.read_text()
    image = str(tmp_path / "frame.jpg")
    frames = sorted(os.listdir(data / "SynthPS-PRW" / "frames"))
    cv2.imwrite(image, cv2.imread(str(data / "SynthPS-PRW" / "frames" / frames[0])))
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    eager = DefaultPredictor(cfg)(cv2.imread(image))["instances"]
    empty = tmp_path / "no_datasets"
    empty.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(empty))
    return {"config": str(config), "weights": cfg.MODEL.WEIGHTS, "image": image, "eager": eager,
            "table": table[0].clone(), "empty": str(empty)}


def _child_env(trained):
    """A fresh process's environment: no datasets, the project importable."""
    return dict(os.environ, DETECTRON2_DATASETS=trained["empty"], OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "projects", "GALW"), ROOT]))


def _run_child(trained):
    env = _child_env(trained)
    work = os.path.dirname(trained["config"])
    frame = cv2.imread(trained["image"])
    video = os.path.join(work, "gallery.avi")
    write_video(video, [frame, cv2.flip(frame, 1), frame], 2)
    proc = subprocess.run([sys.executable, "-c", _CHILD, trained["config"], trained["weights"], trained["image"], ROOT,
                           video, os.path.join(work, "decoded")],
                          capture_output=True, text=True, env=env, cwd=str(os.path.dirname(trained["config"])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_default_predictor_and_eval_only_model_without_datasets(trained):
    assert os.listdir(trained["empty"]) == []
    got = _run_child(trained)
    eager = trained["eager"]
    assert len(eager) > 0
    np.testing.assert_allclose(got["boxes"], eager.pred_boxes.tensor.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["scores"], eager.scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["embeddings"], eager.embeddings.numpy(), atol=1e-5)
    # NAE detects here: gallery embeddings are unit vectors times the detection score (NAE4PS, SeqNet)
    assert np.allclose(np.linalg.norm(got["embeddings"], axis=1), got["scores"], atol=1e-5)
    # --eval-only building: the lookup table (5 identities) comes from the checkpoint
    assert len(got["eval_only_lookup_table"]) == 1
    np.testing.assert_array_equal(got["eval_only_lookup_table"][0], trained["table"].numpy())
    # tools/search.py indexes the image folder from the same two files
    embeddings = np.asarray(got["search_index_embeddings"])
    assert embeddings.shape[0] > 0 and embeddings.shape[1] == 32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), got["search_index_scores"], atol=1e-5)
    # ... and a video: 3 frames at 2 fps, each with its frame number and time, embedded as its decoded picture
    assert got["video_frames"] == [0, 1, 2] and got["video_times"] == pytest.approx([0.0, 0.5, 1.0])
    assert got["video_image_index"] == got["frames_image_index"] and len(got["video_image_index"]) > 0
    assert set(got["video_image_index"]) == {0, 1, 2}
    np.testing.assert_allclose(got["video_embeddings"], got["frames_embeddings"], atol=1e-6)


def test_a_model_without_identity_count_builds_for_inference_but_refuses_to_train():
    from nae_helpers import synthetic_batch, tiny_nae_cfg

    model = build_model(tiny_nae_cfg("MODEL.OIM.NUM_LABELED", 0))  # DATASETS.TRAIN is empty
    assert [m.num_labeled for m in model.modules() if type(m).__name__ == "OIMLoss"] == [None]
    model.eval()
    out = model(synthetic_batch()[:1])[0]["instances"]
    assert out.embeddings.shape[1] == 32
    model.train()
    with pytest.raises(ValueError, match=r"cannot train: \['branches.NAEBranch.roi_heads.oim'\] have no size"):
        model(synthetic_batch())


def test_attribute_model_takes_identity_and_attribute_counts_from_the_checkpoint(tmp_path, monkeypatch):
    """ROI-AlignPS*-Attr with NUM_LABELED 0 and NUM_ATTRIBUTES 0 and its train set absent: both sizes
    come from the checkpoint, and detections, embeddings and attribute probabilities equal the saver's,
    built directly and through detectron2's DefaultPredictor."""
    from nae_helpers import synthetic_batch

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # empty: synth_prw_train cannot load
    opts = ["MODEL.ALIGNPS.SCORE_THRESH_TEST", 0.0, "MODEL.ALIGNPS.DETECTIONS_PER_IMAGE", 10,
            "MODEL.ATTRIBUTE.CONV_DIM", 32, "MODEL.ATTRIBUTE.POOLER_RESOLUTION", 8]
    torch.manual_seed(0)
    saver = build_model(_tiny_cfg("attr/roi_alignps_attr_R18_synth_cpu.yaml", *opts, "MODEL.OIM.NUM_LABELED", 5,
                                  "MODEL.ATTRIBUTE.NUM_ATTRIBUTES", 4)).eval()
    DetectionCheckpointer(saver, save_dir=str(tmp_path)).save("attr_model")
    model = build_model(_tiny_cfg("attr/roi_alignps_attr_R18_synth_cpu.yaml", *opts))
    waiting = sorted(n for n, m in model.named_modules() if getattr(m, "awaiting_checkpoint_size", False))
    assert waiting == ["branches.AlignPSBranch.oim", "branches.AttributeBranch", "branches.NAEBranch.roi_heads.oim"]
    DetectionCheckpointer(model).load(str(tmp_path / "attr_model.pth"))
    assert not any(getattr(m, "awaiting_checkpoint_size", False) for m in model.modules())
    assert model.state_dict().keys() == saver.state_dict().keys()
    batch = synthetic_batch()[:1]
    want, got = saver(batch)[0]["instances"], model.eval()(batch)[0]["instances"]
    assert len(want) > 0 and got.attribute_probs.shape == (len(want), 4)
    for field in ("scores", "embeddings", "attribute_probs"):
        torch.testing.assert_close(got.get(field), want.get(field), atol=1e-6, rtol=0)
    # detectron2's DefaultPredictor from the config and the weights file: the saver's outputs on the
    # image the predictor resizes and feeds
    cfg = _tiny_cfg("attr/roi_alignps_attr_R18_synth_cpu.yaml", *opts)
    cfg.MODEL.WEIGHTS = str(tmp_path / "attr_model.pth")
    predictor = DefaultPredictor(cfg)
    bgr = np.ascontiguousarray(batch[0]["image"].permute(1, 2, 0).numpy())  # as cv2.imread gives it
    pred = predictor(bgr)["instances"]
    assert cfg.INPUT.FORMAT == "BGR"  # the predictor feeds the resized image as it is
    resized = predictor.aug.get_transform(bgr).apply_image(bgr)
    with torch.no_grad():
        want = saver([{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                       "height": bgr.shape[0], "width": bgr.shape[1]}])[0]["instances"]
    assert len(want) > 0 and len(pred) == len(want)
    for field in ("scores", "embeddings", "attribute_probs"):
        torch.testing.assert_close(pred.get(field), want.get(field), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_train_net_eval_only_builds_and_loads_without_datasets(trained, tmp_path):
    """``train_net.py --eval-only`` itself (its AtomicCheckpointer, not a copy of its lines) builds the
    model from a config whose train set is absent and loads the weights; no test set given, so it
    stops after loading."""
    env = _child_env(trained)
    out = tmp_path / "eval_only"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", trained["config"], "--eval-only",
         "MODEL.WEIGHTS", trained["weights"], "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"[Checkpointer] Loading from {trained['weights']}" in log
    assert "OIM needs the number of labeled identities" not in proc.stderr
    assert os.listdir(trained["empty"]) == []
