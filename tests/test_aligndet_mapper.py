"""AlignDet's mapper: two views of the whole image, the pseudo-boxes and their ids, bad inputs,
and the single photometric ops (soco_d2/data/color_augment.py)."""
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes

from soco_d2 import add_aligndet_config
from soco_d2.data import color_augment as ca
from soco_d2.methods.aligndet.mapper import AlignDetDatasetMapper

H, W = 120, 160
SMALL = dict(min_sizes=(60, 80), max_size=120)
PLAIN = dict(SMALL, photometric_ops=("identity",), flip_prob=0.0)
# Pass the filter in a 160 x 120 image: w, h >= 32, aspect <= 3, sqrt(area ratio) <= 0.8.
GOOD = [[10, 10, 60, 50], [40, 30, 120, 100], [100, 20, 150, 90]]


def texture(h=H, w=W, seed=0, cell=16):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def record(path, boxes, image_id=1):
    return {"file_name": path, "image_id": image_id,
            "proposal_boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4)}


@pytest.fixture
def image_path(tmp_path):
    path = str(tmp_path / "img.png")
    assert cv2.imwrite(path, texture())
    return path


def test_two_views_with_the_same_ids(image_path):
    mapper = AlignDetDatasetMapper(**SMALL)
    for seed in range(10):
        out = mapper(record(image_path, GOOD), seed=seed)
        assert len(out["views"]) == 2
        for v in out["views"]:
            img, boxes = v["image"], v["boxes"]
            assert img.dtype == torch.uint8 and img.shape[0] == 3
            short, long = min(img.shape[1:]), max(img.shape[1:])
            assert short in (60, 80) or long == 120  # short side drawn, long side capped
            assert long <= 120
            assert isinstance(boxes, Boxes) and len(boxes) == 3
            b = boxes.tensor
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= img.shape[2]).all() and (b[:, 3] <= img.shape[1]).all()
            assert v["ids"].dtype == torch.int64
        # the same pseudo-boxes, in the same order, in both views (no crop)
        assert out["views"][0]["ids"].tolist() == out["views"][1]["ids"].tolist() == [0, 1, 2]


def test_views_are_independent_and_deterministic(image_path):
    mapper = AlignDetDatasetMapper(**SMALL)
    rec = record(image_path, GOOD)
    outs = [mapper(rec, seed=s) for s in range(20)]
    again = mapper(rec, seed=3)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(outs[3]["views"], again["views"]))
    shapes = {(tuple(o["views"][0]["image"].shape), tuple(o["views"][1]["image"].shape)) for o in outs}
    assert any(a != b for a, b in shapes), "the two views draw their sizes independently"
    flips = {bool(o["views"][0]["boxes"].tensor[0, 0] > o["views"][0]["image"].shape[2] / 2) for o in outs}
    assert flips == {True, False}, "each view flips with p = 0.5"


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_boxes_follow_resize_and_flip(image_path, flip):
    mapper = AlignDetDatasetMapper(**dict(PLAIN, flip_prob=flip))
    out = mapper(record(image_path, GOOD), seed=0)
    original = np.asarray(GOOD, np.float32)
    for v in out["views"]:
        h, w = v["image"].shape[1:]
        scale = np.array([w / W, h / H, w / W, h / H], np.float32)
        expected = original * scale
        if flip:
            expected[:, [0, 2]] = w - expected[:, [2, 0]]
        np.testing.assert_allclose(v["boxes"].tensor.numpy(), expected, atol=0.5)
    # and they show the same content in both views
    crops = []
    for v in out["views"]:
        img = v["image"].permute(1, 2, 0).numpy()
        x0, y0, x1, y1 = v["boxes"].tensor[1].round().int().tolist()
        crops.append(cv2.resize(img[y0:y1, x0:x1], (16, 16), interpolation=cv2.INTER_AREA).astype(float))
    assert np.abs(crops[0] - crops[1]).mean() < 8


def test_filter_keeps_alignDet_boxes_only(image_path):
    boxes = [
        [0, 0, 20, 60],      # w < 32
        [0, 0, 130, 35],     # aspect 130/35 > 3
        [0, 0, 150, 110],    # sqrt(area ratio) = 0.93 > 0.8
        *GOOD,               # indices 3, 4, 5
    ]
    out = AlignDetDatasetMapper(**SMALL)(record(image_path, boxes), seed=0)
    assert out["views"][0]["ids"].tolist() == [3, 4, 5]
    # unlike SoCo's filter, there is no lower bound on the box scale: a 32 x 32 box stays
    out = AlignDetDatasetMapper(**SMALL)(record(image_path, [[5, 5, 37, 37]]), seed=0)
    assert out["views"][0]["ids"].tolist() == [0]


def test_top_k_keeps_the_first_boxes_in_file_order(image_path):
    mapper = AlignDetDatasetMapper(**dict(SMALL, max_boxes=2))
    out = mapper(record(image_path, [[0, 0, 20, 60]] + GOOD), seed=0)
    assert out["views"][1]["ids"].tolist() == [1, 2]


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("boxes", [np.zeros((0, 4)), [[0, 0, 10, 10]]], ids=["none", "none_passes"])
def test_no_pseudo_box_uses_the_whole_image(image_path, boxes):
    out = AlignDetDatasetMapper(**PLAIN)(record(image_path, boxes), seed=0)
    for v in out["views"]:
        h, w = v["image"].shape[1:]
        np.testing.assert_allclose(v["boxes"].tensor.numpy(), [[0, 0, w, h]], atol=1e-4)
        assert v["ids"].tolist() == [len(boxes)]  # a fresh id after the record's boxes


def test_boxes_outside_the_image_are_clipped(image_path):
    out = AlignDetDatasetMapper(**PLAIN)(record(image_path, [[-30, -20, 70, 60], [100, 50, 400, 300]]), seed=0)
    v = out["views"][0]
    h, w = v["image"].shape[1:]
    s = np.array([w / W, h / H, w / W, h / H])
    np.testing.assert_allclose(v["boxes"].tensor.numpy(), np.array([[0, 0, 70, 60], [100, 50, 160, 120]]) * s, atol=0.5)
    assert v["ids"].tolist() == [0, 1]


def test_nan_boxes_are_dropped_and_counted(image_path, caplog):
    mapper = AlignDetDatasetMapper(**PLAIN)
    boxes = [GOOD[0], [np.nan, 0, 50, 50], GOOD[1], [0, 0, np.inf, 40]]
    out = mapper(record(image_path, boxes), seed=0)
    assert out["views"][0]["ids"].tolist() == [0, 2]
    assert mapper.num_nonfinite == 2 and "NaN/inf" in caplog.text
    out = mapper(record(image_path, [[np.nan] * 4]), seed=0)  # nothing left: the whole image
    assert out["views"][0]["ids"].tolist() == [1] and mapper.num_nonfinite == 3


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 not a jpeg at all"], ids=["empty", "corrupt"])
def test_unreadable_image_maps_to_none(tmp_path, data, caplog):
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    mapper = AlignDetDatasetMapper(**SMALL)
    assert mapper(record(str(path), GOOD), seed=0) is None
    assert mapper(record(str(tmp_path / "missing.jpg"), GOOD), seed=0) is None
    assert mapper.num_skipped == 2 and "Skipping unreadable image" in caplog.text


def test_from_config():
    cfg = add_aligndet_config(get_cfg())
    cfg.INPUT.ALIGNDET.MIN_SIZES = (100, 120)
    cfg.INPUT.ALIGNDET.MAX_BOXES = 7
    cfg.INPUT.ALIGNDET.PHOTOMETRIC_OPS = ("identity", "equalize")
    cfg.INPUT.FORMAT = "RGB"
    mapper = AlignDetDatasetMapper(cfg)
    assert mapper.min_sizes == (100, 120) and mapper.max_boxes == 7 and mapper.max_size == 1333
    assert mapper.photometric["ops"] == ("identity", "equalize") and mapper.flip_prob == 0.5
    assert (mapper.box_filter.min_size, mapper.box_filter.max_aspect_ratio, mapper.box_filter.min_scale,
            mapper.box_filter.max_scale) == (32.0, 3.0, 0.0, 0.8)


def test_channel_order(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 2] = 200  # red in BGR
    path = str(tmp_path / "red.png")
    cv2.imwrite(path, img)
    for fmt, channel in (("RGB", 0), ("BGR", 2)):
        out = AlignDetDatasetMapper(**dict(PLAIN, image_format=fmt))(record(path, GOOD), seed=0)
        assert out["views"][0]["image"][channel].float().mean() > 190


# ------------------------------------------------------------------ photometric ops


def test_photometric_ops_follow_their_definitions():
    img = texture(40, 50, seed=3)
    assert np.array_equal(ca.adjust_brightness(img, 1.0), img)
    assert np.array_equal(ca.adjust_brightness(img, 0.0), np.zeros_like(img))
    assert np.array_equal(ca.adjust_saturation(img, 1.0), img)
    assert np.abs(ca.adjust_contrast(img, 1.0).astype(int) - img).max() <= 1
    assert ca.adjust_contrast(img, 0.0).std() < 1  # the mean gray everywhere
    assert np.array_equal(ca.adjust_sharpness(img, 1.0), img)
    blurred = ca.adjust_sharpness(img, 0.0)
    assert np.array_equal(blurred[0], img[0]) and blurred[1:-1, 1:-1].std() < img[1:-1, 1:-1].std()
    assert np.array_equal(ca.posterize(img, 8), img)
    assert (ca.posterize(img, 4) % 16 == 0).all()
    assert np.array_equal(ca.solarize(img, 256), img)
    assert np.array_equal(ca.solarize(img, 0), 255 - img)
    stretched = ca.autocontrast(img // 2 + 40)
    assert (stretched.reshape(-1, 3).min(0) == 0).all() and (stretched.reshape(-1, 3).max(0) == 255).all()
    flat = ca.equalize(img)
    assert flat.shape == img.shape and abs(float(flat.mean()) - 127.5) < 20


def test_random_photometric_picks_every_op_uniformly(monkeypatch):
    img = texture(20, 20)
    picked = []
    functions = {"autocontrast": "autocontrast", "equalize": "equalize", "solarize": "solarize",
                 "posterize": "posterize", "sharpness": "adjust_sharpness", "color": "adjust_saturation",
                 "contrast": "adjust_contrast", "brightness": "adjust_brightness"}
    for op, fn in functions.items():
        monkeypatch.setattr(ca, fn, lambda im, *args, op=op, **kw: picked.append((op, args)) or im)
    np.random.seed(0)
    n = 1800
    for _ in range(n):
        ca.random_photometric(img)
    counts = Counter(op for op, _ in picked)
    counts["identity"] = n - len(picked)
    assert set(counts) == set(ca.PHOTOMETRIC_OPS) and all(150 < c < 250 for c in counts.values()), counts
    bits = {args[0] for op, args in picked if op == "posterize"}
    assert bits == {4, 5, 6, 7, 8}
    factors = [args[0] for op, args in picked if op == "brightness"]
    assert 0.1 <= min(factors) < 0.3 and 1.7 < max(factors) <= 1.9
    with pytest.raises(ValueError, match="Unknown photometric op 'blur'"):
        ca.random_photometric(img, ops=("blur",))
