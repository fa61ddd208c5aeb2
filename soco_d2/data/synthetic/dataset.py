"""Writing the synthetic dataset: files, COCO jsons, manifest (see :mod:`soco_d2.data.synthetic`).

Generation is atomic (a sibling temporary folder renamed into place, manifest last), a no-op on
a complete dataset made with the same arguments, and refuses other arguments unless asked to
overwrite.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from ...utils.atomic_io import atomic_write_json
from .scene import APPEARANCES, SYNTHETIC_CATEGORIES, render_synthetic_scene

__all__ = [
    "GENERATOR_VERSION",
    "DEFAULTS",
    "SPLITS",
    "MANIFEST_NAME",
    "generate_synthetic_dataset",
    "synthetic_split_paths",
    "read_synthetic_manifest",
]

logger = logging.getLogger(__name__)

#: Bump whenever the drawing code (drawing.py, scene.py) changes in a way that alters the
#: output files of existing arguments. Not bumped for the ``appearance`` setting: "independent"
#: draws exactly the files of 2.0, and "category" is told apart by the recorded parameter, so a
#: 2.0 dataset stays valid for ``appearance="independent"`` (see ``read_synthetic_manifest``).
GENERATOR_VERSION = "2.0"

#: The embedded dataset (``make demo``): 2000 unlabelled-for-pretraining train images (their
#: labels are used only by the low-label fine-tuning split of the first 100, see
#: soco_d2/data/builtin.py) and 200 val images, 128-176 px, with per-category appearance.
DEFAULTS = {"num_train": 2000, "num_val": 200, "seed": 0, "min_size": 128, "max_size": 176,
            "appearance": "category"}

#: What a manifest written before the ``appearance`` setting existed drew.
_APPEARANCE_BEFORE_SETTING = "independent"

SPLITS = ("train", "val")

MANIFEST_NAME = "manifest.json"

_JPEG_QUALITY = 95
_MIN_IMAGE_SIDE = 48
_MAX_IMAGE_SIDE = 4096

_LICENSES = [
    {
        "id": 1,
        "name": "CC0 1.0 Universal (public domain dedication)",
        "url": "https://creativecommons.org/publicdomain/zero/1.0/",
    }
]


# ---------------------------------------------------------------------------
# Paths / manifest
# ---------------------------------------------------------------------------
def synthetic_split_paths(out_dir: str, split: str) -> Tuple[str, str]:
    """Return ``(json_path, image_root)`` of ``split`` ("train" or "val") under ``out_dir``.

    Pure path arithmetic: nothing is generated or checked.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown synthetic split {split!r}; expected one of {SPLITS}")
    return (
        os.path.join(out_dir, "annotations", f"instances_{split}.json"),
        os.path.join(out_dir, split),
    )


def read_synthetic_manifest(out_dir: str) -> Optional[dict]:
    """Return the manifest of a complete synthetic dataset in ``out_dir``, or None.

    The params of a manifest written before the ``appearance`` setting existed gain
    ``appearance="independent"``, the only scenes that code drew (the file is not changed).
    """
    path = os.path.join(out_dir, MANIFEST_NAME)
    try:
        with open(path, "r", encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    params = manifest.get("params")
    if isinstance(params, dict) and "appearance" not in params:
        manifest["params"] = dict(params, appearance=_APPEARANCE_BEFORE_SETTING)
    return manifest


def _params(num_train, num_val, seed, min_size, max_size, appearance) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "min_size": min_size,
        "max_size": max_size,
        "appearance": appearance,
    }


def _is_complete(out_dir: str, manifest: dict) -> bool:
    for split in SPLITS:
        json_path, image_root = synthetic_split_paths(out_dir, split)
        if not os.path.isfile(json_path):
            return False
        n = manifest.get("params", {}).get(f"num_{split}", -1)
        for i in range(n):
            if not os.path.isfile(os.path.join(image_root, _file_name(i))):
                return False
    return True


def _file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _val_id_base(num_train: int) -> int:
    base = 100000
    while base <= num_train:
        base *= 10
    return base


# ---------------------------------------------------------------------------
# Dataset generation
# ---------------------------------------------------------------------------
def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) * 0.5)



def _generate_split(root: str, split: str, count: int, params: dict, id_base: int) -> dict:
    json_rel = os.path.join("annotations", f"instances_{split}.json")
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image_id = id_base + index + 1
        rgb, objects = render_synthetic_scene(
            params["seed"], split, index, params["min_size"], params["max_size"],
            appearance=params["appearance"],
        )
        h, w = rgb.shape[:2]
        file_name = _file_name(index)
        ok = cv2.imwrite(
            os.path.join(image_dir, file_name),
            cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
            [int(cv2.IMWRITE_JPEG_QUALITY), _JPEG_QUALITY],
        )
        if not ok:
            raise OSError(f"cv2.imwrite failed for {os.path.join(image_dir, file_name)}")
        if (index + 1) % 1000 == 0:
            logger.info("Synthetic %s: %d/%d images", split, index + 1, count)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "license": 1})
        for k, obj in enumerate(objects):
            annotations.append(
                {
                    "id": image_id * 100 + k + 1,
                    "image_id": image_id,
                    "category_id": obj["category"]["id"],
                    "bbox": obj["bbox"],
                    "area": round(_polygon_area(obj["polygon"]), 2),
                    "iscrowd": 0,
                    "segmentation": [obj["flat"]],
                }
            )
    coco = {
        "info": {
            "description": f"SoCo-D2 synthetic shapes dataset ({split} split)",
            "version": GENERATOR_VERSION,
            "contributor": "soco_d2.data.synthetic (procedurally generated)",
            "seed": params["seed"],
        },
        "licenses": _LICENSES,
        "images": images,
        "annotations": annotations,
        "categories": SYNTHETIC_CATEGORIES,
    }
    atomic_write_json(os.path.join(root, json_rel), coco, separators=(",", ":"))
    return {
        "num_images": len(images),
        "num_annotations": len(annotations),
        "json": json_rel,
        "image_root": split,
        "first_image_id": id_base + 1,
    }


def _check_args(num_train, num_val, seed, min_size, max_size, appearance) -> None:
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed),
                        ("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if num_train + num_val == 0:
        raise ValueError("num_train + num_val must be > 0")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    if not _MIN_IMAGE_SIDE <= min_size <= max_size <= _MAX_IMAGE_SIDE:
        raise ValueError(
            f"need {_MIN_IMAGE_SIDE} <= min_size <= max_size <= {_MAX_IMAGE_SIDE}, "
            f"got min_size={min_size}, max_size={max_size}"
        )


def _result(out_dir: str) -> Dict[str, Tuple[str, str]]:
    return {split: synthetic_split_paths(out_dir, split) for split in SPLITS}


def generate_synthetic_dataset(
    out_dir: str,
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    seed: int = DEFAULTS["seed"],
    min_size: int = DEFAULTS["min_size"],
    max_size: int = DEFAULTS["max_size"],
    appearance: str = DEFAULTS["appearance"],
    overwrite: bool = False,
) -> dict:
    """Generate the synthetic COCO-style dataset into ``out_dir`` (see module docstring).

    Returns ``{"train": (json_path, image_root), "val": (json_path, image_root)}``
    (paths are ``out_dir`` joined with relative parts, as ``synthetic_split_paths``).

    ``appearance``: "category" (each category has its own colour distribution and preferred
    texture) or "independent" (colour and texture independent of the category: the scenes of
    generator 2.0, byte for byte); see :mod:`soco_d2.data.synthetic`.

    * ``out_dir`` holds a complete dataset made with the same arguments: no-op.
    * ``out_dir`` holds a dataset made with other arguments: ``ValueError`` unless
      ``overwrite=True``, which regenerates it (``overwrite=True`` always regenerates).
    * ``out_dir`` exists, is not empty and is not a synthetic dataset: ``ValueError``
      even with ``overwrite=True`` (we never delete folders we did not create).
    """
    _check_args(num_train, num_val, seed, min_size, max_size, appearance)
    num_train, num_val, seed = int(num_train), int(num_val), int(seed)
    min_size, max_size = int(min_size), int(max_size)
    params = _params(num_train, num_val, seed, min_size, max_size, appearance)
    out_dir = os.path.normpath(out_dir)

    replace_existing = False
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir!r} exists and is not a folder")
        manifest = read_synthetic_manifest(out_dir)
        if manifest is None:
            if os.listdir(out_dir):
                raise ValueError(
                    f"Folder {out_dir!r} exists, is not empty and holds no synthetic dataset "
                    f"({MANIFEST_NAME} missing or unreadable); refusing to write into it. "
                    "Choose another folder or remove it."
                )
        elif manifest.get("params") == params and not overwrite:
            if _is_complete(out_dir, manifest):
                logger.info("Synthetic dataset in %s is up to date; nothing to do.", out_dir)
                return _result(out_dir)
            logger.warning("Synthetic dataset in %s is incomplete; regenerating it.", out_dir)
        elif not overwrite:
            raise ValueError(
                f"Folder {out_dir!r} already holds a synthetic dataset generated with different "
                f"arguments ({manifest.get('params')}) than requested ({params}). "
                "Pass overwrite=True (--overwrite) or choose another folder."
            )
        replace_existing = True

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    start = time.perf_counter()
    try:
        os.makedirs(os.path.join(tmp_root, "annotations"))
        splits_info = {}
        for split, count, id_base in (
            ("train", num_train, 0),
            ("val", num_val, _val_id_base(num_train)),
        ):
            splits_info[split] = _generate_split(tmp_root, split, count, params, id_base)
            logger.info(
                "Synthetic %s: %d images, %d annotations",
                split, splits_info[split]["num_images"], splits_info[split]["num_annotations"],
            )
        manifest = {
            "name": "soco_synthetic",
            "params": params,
            "splits": splits_info,
            "categories": SYNTHETIC_CATEGORIES,
        }
        atomic_write_json(os.path.join(tmp_root, MANIFEST_NAME), manifest, separators=(",", ":"))  # last
        _move_into_place(tmp_root, out_dir, params, replace_existing)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    logger.info(
        "Generated synthetic dataset (%d train + %d val images) in %s in %.1fs",
        num_train, num_val, out_dir, time.perf_counter() - start,
    )
    return _result(out_dir)


def _move_into_place(tmp_root: str, out_dir: str, params: dict, replace_existing: bool) -> None:
    old = None
    if replace_existing and os.path.isdir(out_dir):
        old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=os.path.dirname(tmp_root))
        os.rmdir(old)
        os.rename(out_dir, old)
    elif os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)  # empty placeholder folder
    try:
        os.rename(tmp_root, out_dir)
    except OSError:
        manifest = read_synthetic_manifest(out_dir)
        if manifest is not None and manifest.get("params") == params and _is_complete(out_dir, manifest):
            # A concurrent generation with the same arguments finished first: same files.
            shutil.rmtree(tmp_root, ignore_errors=True)
        else:
            if old is not None and not os.path.lexists(out_dir):
                os.rename(old, out_dir)  # put the previous dataset back
                old = None
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
