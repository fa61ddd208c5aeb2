"""Bad images and proposal files: handled when possible, skipped and counted, or a clear error.

Unreadable images and proposals at generation time are covered by tests/test_proposals.py
(test_failures_are_skipped_counted_and_listed, test_missing_file_and_missing_inputs,
test_image_formats); folder id clashes by tests/test_datasets.py
(test_image_folder_errors_name_the_problem). This file covers training time.
"""
import logging
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode
from PIL import Image

from soco_d2.data.pretrain_datasets import attach_proposals, load_soco_images
from soco_d2.data.image_list import list_coco_images
from soco_d2.methods.soco.mapper import SoCoDatasetMapper
from soco_d2.data.sample_stream import SampleStreamDataset

SMALL = dict(view1_size=64, view2_size=64, view3_size=32, num_proposals=2)


def texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def jpeg_bytes(h=90, w=120):
    ok, buf = cv2.imencode(".jpg", texture(h, w))
    assert ok
    return buf.tobytes()


def write_bytes(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_kind(folder, kind):
    """One decodable image file of the given kind; returns its path."""
    base = texture(90, 120)  # BGR
    rgb = np.ascontiguousarray(base[:, :, ::-1])
    opencv = {
        "gray_png": ("gray.png", base[:, :, 0]),
        "gray_jpeg": ("gray.jpg", base[:, :, 0]),
        "rgba_png": ("rgba.png", np.dstack([base, np.full((90, 120), 7, np.uint8)])),
        "gray16_png": ("g16.png", base[:, :, 0].astype(np.uint16) * 257),
        "rgb16_png": ("c16.png", base.astype(np.uint16) * 257),
        "tiny_20x15_jpeg": ("tiny.jpg", texture(15, 20)),
        "tiny_1x1_png": ("one.png", base[:1, :1]),
    }
    pil = {"cmyk_jpeg": ("cmyk.jpg", "CMYK"), "palette_png": ("pal.png", "P")}
    if kind in opencv:
        name, array = opencv[kind]
        path = os.path.join(folder, name)
        assert cv2.imwrite(path, array)
    else:
        name, mode = pil[kind]
        path = os.path.join(folder, name)
        Image.fromarray(rgb).convert(mode).save(path)
    return path


def write_unreadable(folder, kind):
    data = jpeg_bytes()
    if kind == "truncated_jpeg":
        return write_bytes(folder, "truncated.jpg", data[: len(data) // 2])
    if kind == "truncated_jpeg_no_eoi":
        return write_bytes(folder, "no_eoi.jpg", data[:-10])
    if kind == "corrupt_jpeg":
        noise = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
        return write_bytes(folder, "corrupt.jpg", data[:200] + noise)
    if kind == "empty_file":
        return write_bytes(folder, "empty.jpg", b"")
    if kind == "not_an_image":
        return write_bytes(folder, "text.png", b"this is not a PNG at all")
    if kind == "missing_file":
        return os.path.join(folder, "deleted_after_listing.jpg")
    raise ValueError(kind)


def rec(path, boxes=(), image_id=1):
    return {"file_name": path, "image_id": image_id,
            "proposal_boxes": np.asarray(boxes, np.float32).reshape(-1, 4)}


def check_views(out, sizes=(64, 64, 32), k=2):
    assert out is not None
    for v, s in zip(out["views"], sizes):
        assert tuple(v["image"].shape) == (3, s, s) and v["image"].dtype == torch.uint8
        b = v["boxes"].tensor
        assert torch.isfinite(b).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= s).all()
        assert ((b[:, 2:] - b[:, :2]) >= 1 - 1e-4).all()
    for _, _, idx_a, idx_b in out["pairs"]:
        assert len(idx_a) == len(idx_b) == k


class Records(logging.Handler):
    """Collects the records of one logger (works even when Detectron2's setup_logger has
    turned off propagation to the root logger that pytest's caplog listens on)."""

    def __init__(self, name):
        super().__init__(logging.WARNING)
        self.logger, self.messages = logging.getLogger(name), []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("kind", [
    "gray_png", "gray_jpeg", "cmyk_jpeg", "rgba_png", "gray16_png", "rgb16_png", "palette_png",
    "tiny_20x15_jpeg", "tiny_1x1_png",
])
def test_decodable_images_are_mapped(tmp_path, kind):
    path = write_kind(str(tmp_path), kind)
    mapper = SoCoDatasetMapper(**SMALL)
    for seed in range(3):
        check_views(mapper(rec(path, [[2, 2, 60, 50], [30, 20, 110, 85]]), seed=seed))
    assert mapper.num_skipped == 0
    img = mapper(rec(path), seed=0)["views"][0]["image"]
    if kind == "cmyk_jpeg":  # colours survive the CMYK round trip (not inverted, not garbage)
        v1 = SoCoDatasetMapper(**SMALL, color_jitter_prob=0, grayscale_prob=0,
                               blur_prob=(0, 0), flip_prob=0, cutout_in_box=False)
        got = v1(rec(path), seed=0)["views"][0]["image"].permute(1, 2, 0).numpy().astype(int)
        want = cv2.resize(texture(90, 120), (64, 64), interpolation=cv2.INTER_AREA)[:, :, ::-1]
        assert np.abs(got - want).mean() < 12
    if kind in ("gray16_png", "rgb16_png"):  # scaled to 8 bits, not clipped to 255 or ~0
        assert 30 < img.float().mean() < 225


@pytest.mark.parametrize("kind", [
    "truncated_jpeg", "truncated_jpeg_no_eoi", "corrupt_jpeg", "empty_file", "not_an_image",
    "missing_file",
])
def test_unreadable_image_is_skipped_logged_and_counted(tmp_path, kind):
    path = write_unreadable(str(tmp_path), kind)
    mapper = SoCoDatasetMapper(**SMALL)
    with Records("soco_d2.methods.soco.mapper") as log:
        assert mapper(rec(path, [[0, 0, 50, 50]]), seed=0) is None
        assert mapper(rec(path, [[0, 0, 50, 50]])) is None
    assert mapper.num_skipped == 2
    assert len(log.messages) == 2
    assert os.path.basename(path) in log.messages[0] and "1 image(s) skipped" in log.messages[0]
    assert "2 image(s) skipped" in log.messages[1]


def test_stream_replaces_unreadable_images_deterministically(tmp_path):
    good = [write_kind(str(tmp_path), k) for k in ("gray_png", "rgba_png", "cmyk_jpeg")]
    bad = [write_unreadable(str(tmp_path), k) for k in ("empty_file", "corrupt_jpeg")]
    records = [rec(p, image_id=i) for i, p in enumerate(good + bad)]

    def run():
        ds = SampleStreamDataset(records, SoCoDatasetMapper(**SMALL), seed=3)
        with Records("soco_d2.methods.soco.mapper") as log:
            outs = [ds[k] for k in range(10)]  # two epochs: each bad image comes up twice
        return outs, log.messages, ds.mapper.num_skipped

    outs, messages, skipped = run()
    assert all(o["file_name"] in good for o in outs)
    assert skipped == len(messages) >= 4
    assert f"{skipped} image(s) skipped so far" in messages[-1]
    again, _, _ = run()  # same substitutes, same views: the stream stays a function of (seed, k)
    for a, b in zip(outs, again):
        assert a["file_name"] == b["file_name"]
        assert all(torch.equal(va["image"], vb["image"]) for va, vb in zip(a["views"], b["views"]))


def test_only_unreadable_images_stop_with_the_file_names(tmp_path):
    bad = [write_unreadable(str(tmp_path), k) for k in ("empty_file", "corrupt_jpeg")]
    ds = SampleStreamDataset([rec(p) for p in bad], SoCoDatasetMapper(**SMALL), seed=0,
                             max_attempts=4)
    with pytest.raises(RuntimeError, match=r"4 images in a row could not be read.*empty\.jpg"):
        ds[0]


# ------------------------------------------------------------------ proposals


def write_proposals(path, ids, boxes, logits=None):
    data = {"ids": ids, "boxes": boxes, "bbox_mode": BoxMode.XYXY_ABS}
    if logits is not None:
        data["objectness_logits"] = logits
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


def test_non_finite_boxes_are_dropped_and_counted_at_load(tmp_path):
    boxes = np.array([[0, 0, 40, 40], [np.nan, 0, 10, 10], [0, np.inf, 10, 10],
                      [5, 5, -np.inf, 30], [10, 10, 60, 50]], np.float32)
    path = write_proposals(tmp_path / "p.pkl", ["a", "b"], [boxes, boxes[:1]],
                           [np.arange(5, dtype=np.float32), np.zeros(1, np.float32)])
    records = [{"image_id": "a", "file_name": "a.jpg"}, {"image_id": "b", "file_name": "b.jpg"}]
    with Records("soco_d2.data.pretrain_datasets") as log:
        assert attach_proposals(records, path) == 0
    np.testing.assert_array_equal(records[0]["proposal_boxes"], [[10, 10, 60, 50], [0, 0, 40, 40]])
    np.testing.assert_array_equal(records[0]["proposal_objectness_logits"], [4, 0])
    assert len(records[1]["proposal_boxes"]) == 1
    assert any("Dropped 3 proposal boxes with NaN/inf" in m and "'a'" in m for m in log.messages)


def test_mapper_ignores_non_finite_and_clips_outside_boxes(tmp_path):
    path = write_kind(str(tmp_path), "gray_png")  # 120 x 90
    mapper = SoCoDatasetMapper(**SMALL, box_jitter_prob=0.0)
    nan_and_outside = [[np.nan, 0, 50, 50], [0, 0, np.inf, 40], [-500, -500, -400, -400],
                       [1000, 0, 1200, 90], [-30, -20, 60, 50]]
    for seed in range(5):
        out = mapper(rec(path, nan_and_outside), seed=seed)
        check_views(out)
        # only the partly-inside box (id 4) or the whole-image fallback (id 5) can be used
        assert set(out["views"][0]["ids"].tolist()) <= {4, 5} | set(range(6, 20))
    # nothing usable at all -> the whole image is the proposal (fresh id = number of boxes)
    out = mapper(rec(path, nan_and_outside[:4]), seed=0)
    check_views(out)
    assert 4 in out["views"][0]["ids"].tolist()


def test_images_without_proposals_or_missing_from_the_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(folder / f"{name}.jpg"), texture(80, 100))
    path = write_proposals(tmp_path / "p.pkl", ["a", "b"],
                           [np.array([[5, 5, 60, 60]], np.float32), np.zeros((0, 4), np.float32)])
    with Records("soco_d2.data.pretrain_datasets") as log:
        records = load_soco_images(str(folder), path)
    assert any("1 of 3 images have no entry" in m and "'c'" in m for m in log.messages)
    assert [len(r["proposal_boxes"]) for r in records] == [1, 0, 0]
    mapper = SoCoDatasetMapper(**SMALL)
    for r in records:  # no boxes (b: empty list, c: not in the file) -> whole-image proposal
        check_views(mapper(r, seed=1))


def test_duplicate_image_ids_stop_with_the_id(tmp_path):
    path = write_proposals(tmp_path / "dup.pkl", ["a", "b", "a"], [np.zeros((0, 4))] * 3)
    with pytest.raises(ValueError, match=r"dup\.pkl.*'a' appears more than once"):
        attach_proposals([], path)
    path = write_proposals(tmp_path / "dup2.pkl", [7, "7"], [np.zeros((0, 4))] * 2)
    with pytest.raises(ValueError, match="'7' appears more than once"):
        attach_proposals([], path)
    json_file = tmp_path / "coco.json"
    json_file.write_text(
        '{"images": [{"id": 3, "file_name": "x.jpg"}, {"id": 3, "file_name": "y.jpg"}]}'
    )
    with pytest.raises(ValueError, match=r"Duplicate image id 3 in .*coco\.json"):
        list_coco_images(str(json_file), str(tmp_path))


# ------------------------------------------------------------------ a training run


def test_training_runs_through_a_dataset_full_of_bad_inputs(tmp_path):
    """Every kind above in one folder + proposal file, 3 SoCo iterations through the trainer."""
    from train_net import setup
    from soco_d2.methods.soco import SoCoTrainer

    folder = tmp_path / "imgs"
    folder.mkdir()
    for kind in ("gray_png", "cmyk_jpeg", "rgba_png", "gray16_png", "tiny_20x15_jpeg"):
        write_kind(str(folder), kind)
    for kind in ("truncated_jpeg", "empty_file", "corrupt_jpeg"):
        write_unreadable(str(folder), kind)
    props = write_proposals(
        tmp_path / "p.pkl",
        ["gray", "cmyk", "rgba", "truncated"],  # g16, tiny, empty, corrupt: missing
        [np.array([[0, 0, 60, 50], [np.nan, 1, 2, 3]], np.float32),
         np.array([[-50, -50, 500, 500]], np.float32),
         np.zeros((0, 4), np.float32),
         np.array([[0, 0, 10, 10]], np.float32)],
    )

    class Args:
        config_file = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                                   "soco", "soco_instant_test.yaml")
        opts = ["OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "3",
                "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TRAIN", "('test_bad_inputs_run',)",
                "DATASETS.SOCO_REGISTER", f"[('test_bad_inputs_run', '{folder}', '{props}')]"]
        eval_only, resume, num_gpus, num_machines, machine_rank = False, False, 1, 1, 0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Records("soco_d2.methods.soco.mapper") as log:
            trainer = SoCoTrainer(setup(Args()))
            trainer.resume_or_load(resume=False)
            trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    # 12 samples from 8 images (3 unreadable): some were skipped, each one named and counted
    assert log.messages and all("Skipping unreadable image" in m for m in log.messages)
    assert {m.split()[3] for m in log.messages} <= {
        str(folder / n) for n in ("truncated.jpg", "empty.jpg", "corrupt.jpg")}
