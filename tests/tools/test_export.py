"""The model changes that make it exportable keep its eager outputs (boxes, scores, embeddings, query
embedding of three tiny models, equal to those of the code before them within 1e-5), and the input
checks in front of the exported programs name what is wrong or clip boxes as docs/export.md says."""
import pytest
import torch

from conftest import CONFIG_DIR
from export_helpers import REFERENCE_FILE, eager_outputs
from galw.exported import MAX_SIDE, MIN_SIDE, CheckedQuery, check_boxes, check_image


def test_eager_outputs_equal_those_before_the_export_changes():
    # REFERENCE_FILE: eager_outputs run on the model code before galw/modeling/exportable.py
    want = torch.load(REFERENCE_FILE, weights_only=True)
    got = eager_outputs(CONFIG_DIR)
    assert sorted(got) == ["alignps", "nae", "roi_alignps"]
    for model, sizes in want.items():
        for size, outputs in sizes.items():
            assert len(outputs[0]) > 5, (model, size)  # detections to compare
            # boxes: plus one float32 step of the image's longer side: a box is decoded from centres and
            # sizes of up to that many pixels, so a change of summation order (another CPU's kernels, or
            # galw/modeling/deform_conv.py's gather kernel) moves even a small coordinate by that much
            box_atol = 1e-5 + torch.finfo(torch.float32).eps * max(int(side) for side in size.split("x"))
            for field, a, b in zip(("boxes", "scores", "embeddings", "query"), outputs, got[model][size]):
                atol = box_atol if field == "boxes" else 1e-5
                torch.testing.assert_close(b, a, atol=atol, rtol=0.0, msg=f"{model} {size} {field}")


def _image(h=96, w=128, channels=3, dtype=torch.uint8):
    return torch.zeros((channels, h, w), dtype=dtype)


@pytest.mark.parametrize("image, error, match", [
    (_image(dtype=torch.float32), TypeError, r"uint8 \[3, H, W\].*got torch.float32"),
    (_image(channels=1), ValueError, r"\[3, H, W\] \(3 channels first\); got shape \[1, 96, 128\]"),
    (_image().permute(1, 2, 0), ValueError, r"got shape \[96, 128, 3\]: channels last"),
    (_image(h=0), ValueError, r"image is empty: shape \[3, 0, 128\]"),
    (_image(h=MIN_SIDE - 1), ValueError, rf"{MIN_SIDE} to {MAX_SIDE} pixels"),
    (_image()[0], ValueError, r"got shape \[96, 128\]"),
    ("photo.jpg", TypeError, r"torch.Tensor uint8 \[3, H, W\]; got str"),
])
def test_bad_images_are_named(image, error, match):
    with pytest.raises(error, match=match):
        check_image(image)


def test_boxes_are_clipped_or_refused():
    got = check_boxes([[-10.0, 5, 50, 200], [100, 20, 140, 60]], 96, 128)
    assert got.tolist() == [[0.0, 5.0, 50.0, 96.0], [100.0, 20.0, 128.0, 60.0]] and got.dtype == torch.float32
    assert check_boxes(torch.tensor([1.0, 2, 3, 4]), 96, 128).shape == (1, 4)
    with pytest.raises(ValueError, match=r"box \[130.0, 10.0, 150.0, 50.0\] has no area inside the 128x96 image"):
        check_boxes([[1.0, 2, 30, 40], [130, 10, 150, 50]], 96, 128)
    with pytest.raises(ValueError, match="no area inside"):
        check_boxes([[30.0, 2, 10, 40]], 96, 128)
    with pytest.raises(ValueError, match="must be finite"):
        check_boxes([[float("nan"), 2, 10, 40]], 96, 128)
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        check_boxes([[1.0, 2, 3]], 96, 128)


def test_query_checks_before_running_its_program():
    calls = []
    query = CheckedQuery(lambda image, boxes: calls.append((image, boxes)) or boxes[:, :2], embedding_dim=8)
    assert query(_image(), torch.zeros((0, 4))).shape == (0, 8) and not calls
    query(_image(), [[-5.0, 0, 20, 30]])
    assert calls[0][1].tolist() == [[0.0, 0.0, 20.0, 30.0]]
    with pytest.raises(TypeError, match="uint8"):
        query(_image(dtype=torch.float64), [[0.0, 0, 20, 30]])
    assert len(calls) == 1


@pytest.mark.slow
def test_a_detector_that_does_not_export_is_named(tmp_path):
    # NAE's detector is detectron2's RPN, whose proposal selection branches on tensor values
    import galw
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from galw.export import export_model

    cfg = get_cfg()
    galw.add_galw_config(cfg)
    cfg.merge_from_file(f"{CONFIG_DIR}/nae/nae_R18_synth_cpu.yaml")
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.OIM.NUM_LABELED", "3"])
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match=r"gallery program \(detector NAEBranch\) cannot be exported"):
        export_model(model, cfg, str(tmp_path / "out"), image, torch.tensor([[10.0, 10, 60, 90]]),
                     formats=("torch_export",))
    assert not (tmp_path / "out").exists()
