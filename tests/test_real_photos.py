"""The real-photo sets (soco_d2/data/real_photos.py): class-folder jsons built by the project,
their halves, and the names registered for ../shared/data (skipped when it is absent)."""
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from soco_d2.data import real_photos
from soco_d2.data.real_photos import (
    central_box,
    class_folder_json,
    register_class_folder_sets,
    shared_data_available,
    write_class_folder_json,
)


def _class_tree(root, counts, size=(40, 60)):
    """root/<class>/<i>.jpg with counts[class] images of (h, w) = size."""
    for wnid, n in counts.items():
        os.makedirs(root / wnid, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / wnid / f"img_{i:02d}.jpg"), np.full((*size, 3), 100, np.uint8))
    return root


def test_one_central_box_per_image_and_classes_interleaved(tmp_path):
    root = _class_tree(tmp_path / "val", {"n02": 3, "n01": 5, "n03": 2})
    (tmp_path / "names.tsv").write_text("n01\ttench\nn03\tchurch\n")
    data = class_folder_json(str(root), str(tmp_path / "names.tsv"))
    assert [c["name"] for c in data["categories"]] == ["tench", "n02", "church"]  # wnid order
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert len(data["images"]) == len(data["annotations"]) == 10
    # ids 1-3 are the first image of each class, then the second of each, ...
    order = [a["category_id"] for a in sorted(data["annotations"], key=lambda a: a["image_id"])]
    assert order == [1, 2, 3, 1, 2, 3, 1, 2, 1, 1]
    for img, ann in zip(data["images"], data["annotations"]):
        assert (img["width"], img["height"]) == (60, 40)
        assert ann["image_id"] == img["id"] and ann["iscrowd"] == 0
        assert ann["bbox"] == pytest.approx([3.0, 2.0, 54.0, 36.0])  # 5% off every side
    assert central_box(100, 200) == pytest.approx([5, 10, 90, 180])


def test_halves_split_every_class_and_never_share_an_image(tmp_path):
    root = _class_tree(tmp_path / "val", {"a": 5, "b": 4})
    files = {h: {i["file_name"] for i in class_folder_json(str(root), half=h)["images"]} for h in (0, 1)}
    everything = {i["file_name"] for i in class_folder_json(str(root))["images"]}
    assert not files[0] & files[1] and files[0] | files[1] == everything
    assert files[0] == {"a/img_00.jpg", "a/img_01.jpg", "a/img_02.jpg", "b/img_00.jpg", "b/img_01.jpg"}


def test_cached_json_is_rebuilt_only_when_the_images_change(tmp_path):
    root = _class_tree(tmp_path / "val", {"a": 2, "b": 2})
    out = tmp_path / "cache" / "instances.json"
    write_class_folder_json(str(root), str(out))
    stamp = out.stat().st_mtime_ns
    write_class_folder_json(str(root), str(out))
    assert out.stat().st_mtime_ns == stamp  # same listing: not rewritten
    _class_tree(root, {"c": 1})
    write_class_folder_json(str(root), str(out))
    assert len(json.loads(out.read_text())["images"]) == 5


def test_registered_class_folder_sets_load_and_name_a_missing_folder(tmp_path):
    src = tmp_path / "photos"
    _class_tree(src / "train", {"a": 3, "b": 3})
    _class_tree(src / "val", {"a": 2, "b": 2})
    register_class_folder_sets("tinyphotos", str(src), str(tmp_path / "cache"), "")
    train = DatasetCatalog.get("tinyphotos_train_whole")
    assert len(train) == 6 and all(len(r["proposal_boxes"]) == 0 for r in train)
    assert all("annotations" not in r for r in train)  # pretraining records carry no label
    val = DatasetCatalog.get("tinyphotos_val")
    assert len(val) == 4 and all(len(r["annotations"]) == 1 for r in val)
    halves = [DatasetCatalog.get(f"tinyphotos_val_{s}") for s in ("select", "report")]
    assert sorted(len(h) for h in halves) == [2, 2]

    register_class_folder_sets("nophotos", str(tmp_path / "absent"), str(tmp_path / "c2"), "")
    with pytest.raises(FileNotFoundError, match="absent"):
        DatasetCatalog.get("nophotos_val")


@pytest.mark.skipif(not shared_data_available(real_photos.IMAGENETTE),
                    reason="../shared/data/imagenette_160 is not present")
def test_imagenette_probe_halves_cover_val_with_every_class():
    select = DatasetCatalog.get("imagenette_160_val_select")
    report = DatasetCatalog.get("imagenette_160_val_report")
    assert len(select) + len(report) == 3925
    assert not {r["file_name"] for r in select} & {r["file_name"] for r in report}
    first = [r["annotations"][0]["category_id"] for r in select[:100]]
    assert sorted(set(first)) == list(range(10)) and max(first.count(c) for c in range(10)) == 10


@pytest.mark.skipif(not shared_data_available(real_photos.AQUARIUM),
                    reason="../shared/data/aquarium is not present")
def test_aquarium_detection_sets():
    from detectron2.data import MetadataCatalog

    valid = DatasetCatalog.get("aquarium_valid")
    assert len(valid) == 127 and all(os.path.isfile(r["file_name"]) for r in valid[:5])
    assert MetadataCatalog.get("aquarium_valid").thing_classes[0] == "fish"
    assert sum(len(r["annotations"]) for r in valid) == 909
