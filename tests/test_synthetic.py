"""Tests for the embedded synthetic dataset (soco_d2.data.synthetic)."""
import hashlib
import json
import os
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from soco_d2.data.synthetic import dataset as syn
from soco_d2.data.synthetic.drawing import FILL_KINDS
from soco_d2.data.synthetic.scene import (
    CATEGORY_APPEARANCE,
    MAX_OBJECTS,
    MAX_ROTATION_DEG,
    MIN_OBJECTS,
)
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


# ---------------------------------------------------------------------------
# appearance: "independent" (generator 2.0's scenes) and "category"
# ---------------------------------------------------------------------------
# sha256 of the pixels, shape and annotations of five scenes (seed 0, 128-176 px) rendered by
# the code at commit 4074334, before the appearance setting existed. "independent" has to
# reproduce them exactly, so that every figure measured on those scenes stays reproducible
# (on the same numpy / OpenCV versions, as the determinism above).
_GENERATOR_2_0_SCENES = {
    ("train", 0): "aea4e52cf6e7d4744a9e64c6e25ba7900912352e822ceac53c220dc71953d0d0",
    ("train", 1): "486d018c1145afaf4b514987a90fd29a41efb87ecf3a0325c4e4ea924e64896d",
    ("train", 2): "4b6350118487a6a176d1110ad9f30282a4ee6f4e5df2ceeaee7aca2e0552da1c",
    ("val", 0): "381bb8e9355492c4eb184ae6cebb7b65dbf41afb7ee55a725e55cf6359d9ceb0",
    ("val", 5): "1925aa2376a6aa1770d76fb74cb28c0419f71feef82cd6ef05c4551ed20671a6",
}


def _scene_digest(rgb, objects):
    h = hashlib.sha256(rgb.tobytes())
    h.update(repr(rgb.shape).encode())
    for o in objects:
        h.update(json.dumps([o["category"]["id"], o["flat"], o["bbox"]]).encode())
    return h.hexdigest()


def test_independent_appearance_reproduces_generator_2_0():
    for (split, index), digest in _GENERATOR_2_0_SCENES.items():
        rgb, objects = syn.render_synthetic_scene(0, split, index, 128, 176, appearance="independent")
        assert _scene_digest(rgb, objects) == digest, (split, index)


def test_category_appearance_deterministic_and_only_the_fills_change():
    for index in range(3):
        a = syn.render_synthetic_scene(0, "train", index, 96, 128, appearance="category")
        b = syn.render_synthetic_scene(0, "train", index, 96, 128, appearance="category")
        assert _scene_digest(*a) == _scene_digest(*b)
        for other in ("independent", "texture"):
            c = syn.render_synthetic_scene(0, "train", index, 96, 128, appearance=other)
            # sizes, backgrounds and the layout are drawn before the objects' colours: the same
            assert a[0].shape == c[0].shape
            assert ([(o["category"], o["flat"]) for o in a[1]]
                    == [(o["category"], o["flat"]) for o in c[1]])
            outside = ~np.any([o["mask"] for o in a[1]], axis=0)
            assert not np.array_equal(a[0][~outside], c[0][~outside])
    with pytest.raises(ValueError, match="appearance"):
        syn.render_synthetic_scene(0, "train", 0, 96, 128, appearance="shape")


def _object_stats(appearance, n_scenes=200):
    """(category index, unit vector of the object's mean hue, fill, fill residual) of every
    object in ``n_scenes`` rendered scenes (~470 objects). The mean hue is the circular mean
    of the hue of the object's pixels, weighted by their saturation; the residual is the std
    of the object's pixels about the best plane (solid and gradient fills are nearly planar)."""
    rows = []
    for index in range(n_scenes):
        rgb, objects = syn.render_synthetic_scene(1, "train", index, 96, 112, appearance=appearance)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float64)
        for o in objects:
            hue, sat = hsv[o["mask"]][:, 0] * (2 * np.pi / 256), hsv[o["mask"]][:, 1]
            v = np.array([np.sum(sat * np.cos(hue)), np.sum(sat * np.sin(hue))])
            ys, xs = np.nonzero(o["mask"])
            plane = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
            pixels = rgb[ys, xs].astype(np.float64)
            coef = np.linalg.lstsq(plane, pixels, rcond=None)[0]
            residual = float((pixels - plane @ coef).std())
            rows.append((o["category"]["id"] - 1, v / np.linalg.norm(v), o["fill"], residual))
    return rows


@pytest.fixture(scope="module")
def object_stats():
    return {appearance: _object_stats(appearance) for appearance in syn.APPEARANCES}


def _hue_by_category(rows):
    """Per-category mean of the objects' hue unit vectors (4, 2) and the accuracy of naming
    an object's category by the nearest of those means."""
    cats = np.array([r[0] for r in rows])
    hues = np.array([r[1] for r in rows])
    means = np.array([hues[cats == c].mean(axis=0) for c in range(len(SYNTHETIC_CATEGORIES))])
    accuracy = float(np.mean(np.argmax(hues @ means.T, axis=1) == cats))
    return means, accuracy


def _pairwise(means):
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    return d[np.triu_indices(len(means), 1)]


def _fill_shares(rows):
    """{category index: {fill: share of that category's objects}}."""
    counts = {}
    for cat, _, fill, _ in rows:
        counts.setdefault(cat, Counter())[fill] += 1
    return {cat: {f: n / sum(c.values()) for f, n in c.items()} for cat, c in counts.items()}


def test_category_appearance_hue_goes_with_the_category(object_stats):
    rows = object_stats["category"]
    assert len(rows) >= 400
    means, accuracy = _hue_by_category(rows)
    # each category's hues concentrate (a mean resultant far from 0) in different directions
    assert np.linalg.norm(means, axis=1).min() > 0.5, means
    assert _pairwise(means).min() > 0.7, means
    # ... and overlap: the hue alone names the category well above chance, but not always
    assert 0.55 < accuracy < 0.85, accuracy


@pytest.mark.parametrize("appearance", ["independent", "texture"])
def test_hue_ignores_the_category(object_stats, appearance):
    means, accuracy = _hue_by_category(object_stats[appearance])
    # sampling noise alone: ~0.1 between two categories' means of ~117 random directions
    assert _pairwise(means).max() < 0.4, means
    assert accuracy < 0.4, accuracy  # chance is 0.25


@pytest.mark.parametrize("appearance", ["category", "texture"])
def test_appearance_prefers_one_fill_per_category(object_stats, appearance):
    shares = _fill_shares(object_stats[appearance])
    assert sorted(shares) == list(range(len(SYNTHETIC_CATEGORIES)))
    for cat, share in shares.items():
        name = SYNTHETIC_CATEGORIES[cat]["name"]
        top = max(share, key=share.get)
        assert top == CATEGORY_APPEARANCE[name]["fill"], (name, share)
        assert 0.45 < share[top] < 0.85, (name, share)
        assert len(share) == len(FILL_KINDS)  # the other kinds occur too


def test_independent_appearance_fills_ignore_the_category(object_stats):
    for cat, share in _fill_shares(object_stats["independent"]).items():
        assert max(share.values()) < 0.4, (SYNTHETIC_CATEGORIES[cat]["name"], share)


def test_recorded_fill_is_the_drawn_one(object_stats):
    """The ``fill`` an object reports is what its pixels show: solid and gradient fills (a
    plane plus shading and sensor noise) fit a plane closely, textured ones do not."""
    rows = object_stats["category"] + object_stats["independent"]
    flat = [r[3] for r in rows if r[2] in ("solid", "gradient")]
    textured = [r[3] for r in rows if r[2] in ("stripes", "dots", "noise")]
    assert flat and textured
    assert max(flat) < 5.0
    assert np.median(textured) > 8.0


def test_appearance_is_recorded_and_a_change_is_detected(tmp_path):
    out = str(tmp_path / "ds")
    generate_synthetic_dataset(out, **SMALL)
    manifest = json.loads(_read(os.path.join(out, "manifest.json")))
    assert manifest["params"]["appearance"] == "category" == syn.DEFAULTS["appearance"]
    with pytest.raises(ValueError, match="appearance"):
        generate_synthetic_dataset(out, **SMALL, appearance="independent")
    with pytest.raises(ValueError, match="appearance"):
        generate_synthetic_dataset(str(tmp_path / "x"), **SMALL, appearance="shape")

    # A dataset written before the setting existed (no "appearance" in its manifest) holds the
    # independent scenes: up to date for "independent", different from "category".
    old = str(tmp_path / "old")
    generate_synthetic_dataset(old, **SMALL, appearance="independent")
    path = os.path.join(old, "manifest.json")
    manifest = json.loads(_read(path))
    del manifest["params"]["appearance"]
    with open(path, "w") as f:
        json.dump(manifest, f)
    before = {rel: os.stat(p).st_mtime_ns for rel, p in _files(old).items()}
    generate_synthetic_dataset(old, **SMALL, appearance="independent")
    assert {rel: os.stat(p).st_mtime_ns for rel, p in _files(old).items()} == before
    with pytest.raises(ValueError, match="different"):
        generate_synthetic_dataset(old, **SMALL)


def test_cli_appearance(tmp_path):
    cli = load_script("tools/make_synthetic_dataset.py")
    out = str(tmp_path / "cli")
    argv = ["--out", out, "--num-train", "2", "--num-val", "1", "--min-size", "96", "--max-size", "96"]
    assert cli.main(argv + ["--appearance", "independent"]) == 0
    assert json.loads(_read(os.path.join(out, "manifest.json")))["params"]["appearance"] == "independent"
    assert cli.main(argv) == 2  # the default, "category", differs
    with pytest.raises(SystemExit):
        cli.main(argv + ["--appearance", "shape"])
