import os
import pickle

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from soco_d2.data import (
    attach_proposals,
    list_image_folder,
    num_images,
    register_datasets_from_cfg,
    register_soco_images,
)


def _write_images(root, rel_paths, size=(48, 64)):
    for rel in rel_paths:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.full((*size, 3), 127, np.uint8))


def _write_proposals(path, ids, boxes, logits=None, mode=BoxMode.XYXY_ABS):
    data = {"ids": ids, "boxes": boxes, "bbox_mode": mode}
    if logits is not None:
        data["objectness_logits"] = logits
    with open(path, "wb") as f:
        pickle.dump(data, f)


def test_image_folder_ids_are_relative_paths_without_extension(tmp_path):
    _write_images(tmp_path, ["n01/a.JPEG", "n01/b.jpg", "n02/c.png", "top.jpg"])
    (tmp_path / "notes.txt").write_text("not an image")
    items = list_image_folder(str(tmp_path))
    assert [i for i, _ in items] == ["n01/a", "n01/b", "n02/c", "top"]
    assert all(os.path.isfile(p) for _, p in items)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_image_folder(str(tmp_path / "missing_dir"))
    with pytest.raises(ValueError, match="No image"):
        list_image_folder(str(tmp_path))
    _write_images(tmp_path, ["a.jpg", "a.png"])
    with pytest.raises(ValueError, match="'a'"):
        list_image_folder(str(tmp_path))


def test_registered_folder_yields_proposal_boxes(tmp_path):
    root = tmp_path / "imgs"
    _write_images(root, ["x/1.jpg", "x/2.jpg", "y/3.jpg"])
    props = tmp_path / "p.pkl"
    boxes = [np.array([[0, 0, 10, 10], [5, 5, 40, 30]], np.float32),
             np.array([[1, 2, 3, 4]], np.float32)]
    # second box of x/1 has the higher logit, so it must come first
    _write_proposals(props, ["x/1", "y/3"], boxes, [np.array([0.1, 0.9], np.float32),
                                                   np.array([0.0], np.float32)])
    register_soco_images("test_folder_ds", str(root), str(props))
    assert num_images("test_folder_ds") == 3
    dicts = {d["image_id"]: d for d in DatasetCatalog.get("test_folder_ds")}
    assert set(dicts) == {"x/1", "x/2", "y/3"}
    np.testing.assert_array_equal(dicts["x/1"]["proposal_boxes"], boxes[0][[1, 0]])
    np.testing.assert_array_equal(dicts["y/3"]["proposal_boxes"], boxes[1])
    assert dicts["x/1"]["proposal_bbox_mode"] == BoxMode.XYXY_ABS
    # x/2 is not in the proposal file: zero boxes, the mapper falls back to the whole image
    assert dicts["x/2"]["proposal_boxes"].shape == (0, 4)
    # same arguments again: fine; different ones: refused with the name
    register_soco_images("test_folder_ds", str(root), str(props))
    with pytest.raises(ValueError, match="test_folder_ds"):
        register_soco_images("test_folder_ds", str(root), None)


def test_registered_coco_json_uses_coco_ids_and_sizes(coco_sample, tmp_path):
    import json

    with open(os.path.join(coco_sample, "instances.json")) as f:
        images = json.load(f)["images"]
    props = tmp_path / "p.pkl"
    ids = [img["id"] for img in images]
    _write_proposals(props, ids, [np.array([[0, 0, 50, 60]], np.float32)] * len(ids))
    register_soco_images(
        "test_coco_sample_ds", os.path.join(coco_sample, "images"), str(props),
        os.path.join(coco_sample, "instances.json"),
    )
    dicts = DatasetCatalog.get("test_coco_sample_ds")
    assert len(dicts) == len(images) == 100
    d0 = dicts[0]
    assert d0["image_id"] == images[0]["id"]
    assert (d0["height"], d0["width"]) == (images[0]["height"], images[0]["width"])
    assert "annotations" not in d0  # labels ignored
    assert d0["proposal_boxes"].shape == (1, 4)


def test_xywh_proposals_are_converted(tmp_path):
    props = tmp_path / "p.pkl"
    _write_proposals(props, [7], [np.array([[10, 20, 30, 40]], np.float32)], mode=BoxMode.XYWH_ABS)
    records = [{"image_id": 7, "file_name": "x.jpg"}]
    assert attach_proposals(records, str(props)) == 0
    np.testing.assert_array_equal(records[0]["proposal_boxes"], [[10, 20, 40, 60]])


def test_proposal_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        attach_proposals([], str(tmp_path / "nope.pkl"))
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"boxes": []}, f)
    with pytest.raises(ValueError, match="'ids'"):
        attach_proposals([], str(bad))


def test_register_from_cfg(tmp_path):
    from detectron2.config import get_cfg

    from soco_d2 import add_soco_config

    _write_images(tmp_path / "imgs", ["a.jpg"])
    cfg = add_soco_config(get_cfg())
    cfg.DATASETS.SOCO_REGISTER = [("test_cfg_ds", str(tmp_path / "imgs"), "")]
    register_datasets_from_cfg(cfg)
    (d,) = DatasetCatalog.get("test_cfg_ds")
    assert d["image_id"] == "a" and d["proposal_boxes"].shape == (0, 4)
    cfg.DATASETS.SOCO_REGISTER = [("only_a_name",)]
    with pytest.raises(ValueError, match="only_a_name"):
        register_datasets_from_cfg(cfg)
