"""Listing the images of a plain folder or a COCO json, with the ids SoCo uses for them.

One source of truth for image ids, shared by proposal generation and dataset registration, so a
proposal file written for a folder always matches the dataset registered from the same folder:

- COCO json: the COCO image id (an int).
- Image folder (searched recursively): the path relative to the folder, without extension, with
  '/' separators. For a flat folder that is the file name without extension.
"""
import json
import os
from typing import List, Tuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def folder_image_id(image_root: str, path: str) -> str:
    """Image id of ``path`` inside ``image_root``: relative path without extension."""
    rel = os.path.relpath(path, image_root)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def list_image_folder(image_root: str) -> List[Tuple[str, str]]:
    """All images under ``image_root`` (recursive), as ``(image_id, path)`` pairs sorted by id.

    Raises:
        FileNotFoundError: ``image_root`` is not a directory.
        ValueError: it holds no image, or two files map to the same id (``a.jpg`` and ``a.png``).
    """
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image folder does not exist: {image_root}")
    items = []
    for dirpath, _, filenames in os.walk(image_root, followlinks=True):
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(dirpath, name)
                items.append((folder_image_id(image_root, path), path))
    if not items:
        raise ValueError(
            f"No image ({', '.join(IMAGE_EXTENSIONS)}) found under {image_root}"
        )
    items.sort()
    seen = {}
    for image_id, path in items:
        if image_id in seen:
            raise ValueError(
                f"Two images share the id '{image_id}': {seen[image_id]} and {path}"
            )
        seen[image_id] = path
    return items


def read_coco_json(json_file: str) -> dict:
    """The parsed COCO instances json, checked to exist and to have an ``images`` list.

    Raises:
        FileNotFoundError: the json file does not exist.
        ValueError: the file has no ``images`` list.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json does not exist: {json_file}")
    with open(json_file) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{json_file} has no 'images' list; is it a COCO instances file?")
    return data


def list_coco_images(json_file: str, image_root: str) -> List[Tuple[int, str]]:
    """The images of a COCO instances json as ``(coco_image_id, path)``, labels ignored.

    Raises:
        FileNotFoundError: the json file does not exist.
        ValueError: the file has no ``images`` list, or an image id appears twice.
    """
    data = read_coco_json(json_file)
    items, seen = [], set()
    for img in data["images"]:
        image_id = img["id"]
        if image_id in seen:
            raise ValueError(f"Duplicate image id {image_id} in {json_file}")
        seen.add(image_id)
        items.append((image_id, os.path.join(image_root, img["file_name"])))
    return items
