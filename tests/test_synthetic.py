"""Tests for the embedded synthetic dataset (soco_d2.data.synthetic)."""
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from soco_d2.data.synthetic import dataset as syn
from soco_d2.data.synthetic.scene import MAX_OBJECTS, MAX_ROTATION_DEG, MIN_OBJECTS
from soco_d2.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    generate_synthetic_dataset,
    synthetic_split_paths,
)
from train_helpers import load_script

SMALL = dict(num_train=6, num_val=3, seed=0, min_size=96, max_size=128)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = p
    return out


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("syn") / "data")
    return out, generate_synthetic_dataset(out, **SMALL)


def test_layout_and_return_value(dataset):
    out, paths = dataset
    assert set(paths) == {"train", "val"}
    for split in ("train", "val"):
        json_path, image_root = paths[split]
        assert (json_path, image_root) == synthetic_split_paths(out, split)
        assert os.path.isfile(json_path)
        assert json_path == os.path.join(out, "annotations", f"instances_{split}.json")
        assert image_root == os.path.join(out, split)
    assert sorted(os.listdir(os.path.join(out, "train"))) == [f"{i:06d}.jpg" for i in range(6)]
    assert sorted(os.listdir(os.path.join(out, "val"))) == [f"{i:06d}.jpg" for i in range(3)]
    manifest = json.loads(_read(os.path.join(out, "manifest.json")))
    assert manifest["params"]["seed"] == 0
    assert manifest["params"]["num_train"] == 6 and manifest["params"]["num_val"] == 3
    assert manifest["splits"]["train"]["num_images"] == 6
    with pytest.raises(ValueError):
        synthetic_split_paths(out, "test")
    # no temporary folders are left next to the dataset
    assert os.listdir(os.path.dirname(out)) == ["data"]


def test_deterministic_and_seed_dependent(dataset, tmp_path):
    out, _ = dataset
    other = str(tmp_path / "again")
    generate_synthetic_dataset(other, **SMALL)
    a, b = _files(out), _files(other)
    assert sorted(a) == sorted(b)
    for rel in a:
        assert _read(a[rel]) == _read(b[rel]), rel

    reseeded = str(tmp_path / "seed1")
    generate_synthetic_dataset(reseeded, **dict(SMALL, seed=1))
    c = _files(reseeded)
    images = [rel for rel in a if rel.endswith(".jpg")]
    assert images and all(_read(a[rel]) != _read(c[rel]) for rel in images)


def test_coco_annotations_valid(dataset):
    out, paths = dataset
    valid_ids = {c["id"] for c in SYNTHETIC_CATEGORIES}
    all_image_ids = []
    for split in ("train", "val"):
        json_path, image_root = paths[split]
        coco = COCO(json_path)
        used = set()
        img_ids = coco.getImgIds()
        assert len(img_ids) == SMALL[f"num_{split}"]
        all_image_ids += img_ids
        for img in coco.loadImgs(img_ids):
            assert isinstance(img["id"], int) and img["id"] > 0
            assert os.path.isfile(os.path.join(image_root, img["file_name"]))
            H, W = img["height"], img["width"]
            assert SMALL["min_size"] <= H <= SMALL["max_size"]
            assert SMALL["min_size"] <= W <= SMALL["max_size"]
            assert cv2.imread(os.path.join(image_root, img["file_name"])).shape == (H, W, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert MIN_OBJECTS <= len(anns) <= MAX_OBJECTS
            for ann in anns:
                used.add(ann["category_id"])
                assert ann["iscrowd"] == 0
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and ann["area"] > 0
                assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
                poly = ann["segmentation"]
                assert isinstance(poly, list) and len(poly) >= 1
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in poly)
                m = coco.annToMask(ann)
                assert m.shape == (H, W) and m.sum() > 0
                ys, xs = np.nonzero(m)
                mb = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert np.allclose(mb, [x, y, x + w, y + h], atol=1.5), (mb, ann["bbox"])
                # polygon area and pixel count agree roughly
                assert abs(m.sum() - ann["area"]) <= 0.15 * ann["area"] + 10
            # objects do not overlap
            masks = [coco.annToMask(a) for a in anns]
            assert np.sum(masks, axis=0).max() == 1
        assert used <= valid_ids
        if split == "train":
            assert len(used) > 1
    assert len(set(all_image_ids)) == len(all_image_ids)


def test_drawn_pixels_match_polygons():
    """The polygon IS the drawn mask: re-rendering a scene gives annToMask exactly."""
    for index in range(3):
        rgb, objects = syn.render_synthetic_scene(0, "train", index, 96, 128)
        H, W = rgb.shape[:2]
        assert rgb.dtype == np.uint8 and rgb.ndim == 3
        for obj in objects:
            rle = mask_util.merge(mask_util.frPyObjects([obj["polygon"].reshape(-1).tolist()], H, W))
            assert (mask_util.decode(rle).astype(bool) == obj["mask"]).all()


def test_shapes_keep_their_canonical_pose():
    """Squares are rotated by at most MAX_ROTATION_DEG (an edge within that angle of the x
    axis); over many draws both signs of rotation occur."""
    from soco_d2.data.synthetic.drawing import shape_polygon

    rng = np.random.default_rng(0)
    angles = []
    for _ in range(200):
        poly = shape_polygon(rng, "square", 40.0, 100, 100, MAX_ROTATION_DEG)
        dx, dy = poly[1] - poly[0]
        angle = np.degrees(np.arctan2(dy, dx))
        angle = (angle + 45.0) % 90.0 - 45.0  # a square's edge direction, modulo 90 degrees
        angles.append(angle)
    angles = np.array(angles)
    assert np.abs(angles).max() <= MAX_ROTATION_DEG + 0.5  # + rounding of the stored corners
    assert angles.min() < -MAX_ROTATION_DEG / 2 and angles.max() > MAX_ROTATION_DEG / 2


def test_rerun_is_noop_and_conflicts_raise(tmp_path):
    out = str(tmp_path / "ds")
    generate_synthetic_dataset(out, **SMALL)
    before = {rel: os.stat(p).st_mtime_ns for rel, p in _files(out).items()}
    again = generate_synthetic_dataset(out, **SMALL)
    assert again == {s: synthetic_split_paths(out, s) for s in ("train", "val")}
    after = {rel: os.stat(p).st_mtime_ns for rel, p in _files(out).items()}
    assert before == after

    with pytest.raises(ValueError, match="ds"):
        generate_synthetic_dataset(out, **dict(SMALL, num_train=7))
    with pytest.raises(ValueError) as e:
        generate_synthetic_dataset(out, **dict(SMALL, seed=3))
    assert out in str(e.value)
    assert {rel: os.stat(p).st_mtime_ns for rel, p in _files(out).items()} == before

    generate_synthetic_dataset(out, **dict(SMALL, num_train=7), overwrite=True)
    manifest = json.loads(_read(os.path.join(out, "manifest.json")))
    assert manifest["params"]["num_train"] == 7
    assert len(os.listdir(os.path.join(out, "train"))) == 7
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_refuses_foreign_folder_and_bad_args(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="mine"):
            generate_synthetic_dataset(str(foreign), **SMALL, overwrite=overwrite)
    assert (foreign / "keep.txt").read_text() == "precious"

    empty = tmp_path / "empty"
    empty.mkdir()
    generate_synthetic_dataset(str(empty), **SMALL)
    assert os.path.isfile(empty / "manifest.json")

    with pytest.raises(ValueError):
        generate_synthetic_dataset(str(tmp_path / "x"), **dict(SMALL, min_size=200, max_size=100))
    with pytest.raises(ValueError):
        generate_synthetic_dataset(str(tmp_path / "x"), **dict(SMALL, seed=-1))


def test_interrupted_generation_never_looks_complete(tmp_path, monkeypatch):
    out = str(tmp_path / "ds")
    real = syn._generate_split

    def boom(root, split, *args, **kwargs):
        if split == "val":
            raise KeyboardInterrupt("killed")
        return real(root, split, *args, **kwargs)

    monkeypatch.setattr(syn, "_generate_split", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(out, **SMALL)
    assert not os.path.exists(out)
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(syn, "_generate_split", real)
    generate_synthetic_dataset(out, **SMALL)
    # a dataset with the manifest but missing files is regenerated, not trusted
    os.remove(os.path.join(out, "val", "000001.jpg"))
    generate_synthetic_dataset(out, **SMALL)
    assert os.path.isfile(os.path.join(out, "val", "000001.jpg"))


def test_detectron2_load_coco_json(dataset):
    from detectron2.data.datasets import load_coco_json
    from detectron2.structures import BoxMode

    out, paths = dataset
    for split in ("train", "val"):
        json_path, image_root = paths[split]
        dicts = load_coco_json(json_path, image_root)
        assert len(dicts) == SMALL[f"num_{split}"]
        for d in dicts:
            assert os.path.isfile(d["file_name"])
            assert d["file_name"].startswith(image_root)
            assert MIN_OBJECTS <= len(d["annotations"]) <= MAX_OBJECTS
            for ann in d["annotations"]:
                assert ann["bbox_mode"] == BoxMode.XYWH_ABS
                assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
                assert ann["category_id"] in {c["id"] for c in SYNTHETIC_CATEGORIES}


def test_cli(tmp_path, capsys):
    cli = load_script("tools/make_synthetic_dataset.py")
    out = str(tmp_path / "cli")
    argv = ["--out", out, "--num-train", "4", "--num-val", "2", "--min-size", "96", "--max-size", "112"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert out in printed and "4 images" in printed and "2 images" in printed
    assert cli.main(argv) == 0  # no-op
    assert cli.main(argv[:3] + ["5"] + argv[4:]) == 2  # conflicting args without --overwrite
    assert cli.main(argv[:3] + ["5"] + argv[4:] + ["--overwrite"]) == 0
    assert len(os.listdir(os.path.join(out, "train"))) == 5
