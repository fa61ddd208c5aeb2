"""The real-photo sets of ``../shared/data`` under names in DatasetCatalog (nothing is copied).

Sources: ``$SOCO_SHARED_DATA`` if set, else ``<repo>/../shared/data``; each set is a folder
there. A missing folder registers its names all the same (registration reads nothing); loading
one then raises FileNotFoundError naming the folder, and tests skip on
:func:`shared_data_available`.

Imagenette (``imagenette_160/``: ImageNet photos of 10 classes at 160 x 160, one folder per
class, the class being the folder's WordNet id):

- ``imagenette_160_train_soco``: the 9,469 train images as a pretraining set (labels never
  read), with the selective-search proposals of
  ``$DETECTRON2_DATASETS/imagenette_160/proposals_train.pkl`` (:data:`IMAGENETTE_PROPOSALS`)::

      python tools/generate_proposals.py --image-dir ../shared/data/imagenette_160/train \\
          --output datasets/imagenette_160/proposals_train.pkl

- ``imagenette_160_train_whole``: the same images with no proposals, so every view's only
  proposal is the whole image (the image-level control of SoCo's object-level loss).
- ``imagenette_160_train_labelled``: the train images as a labelled box set (below), for the
  supervised reference arm only.
- ``imagenette_160_val`` (3,925 images), ``imagenette_160_val_select`` and
  ``imagenette_160_val_report`` (its two halves): labelled probe sets.

The labelled sets are COCO jsons the project builds from the class folders, cached under
``$DETECTRON2_DATASETS/imagenette_160/`` (rewritten when the image list changes). Each image
gets **one box, its central 90%** (5% margin on every side): an Imagenette label names the
image, not a located object, and the photos are object-centred, so the box stands for "the
object this photo shows" without claiming a location. The margin keeps the box off the image
border and lets the detector's level rule treat it as the large object it is. Category ids are
1-10 in the sorted order of the WordNet ids (names from ``classes.tsv``).

Image ids interleave the classes (ids 1-10 are the first image of each class, 11-20 the
second, ...), so any prefix of the records, as ``TEST.PROBE.MAX_IMAGES`` takes, holds every
class about equally. The halves split each class's files, sorted by name, into its first half
(``select``: for choosing recipes) and the rest (``report``: for the figures reported), so a
recipe is never chosen on the images it is reported on.

Aquarium (``aquarium/``: 7 classes of real aquarium photos, crowded scenes, fish about 60% of
the boxes; COCO jsons of its own):

- ``aquarium_train`` (448 images) / ``aquarium_valid`` (127): detection sets.
- ``aquarium_train_soco``: the train images as a pretraining set (labels never read), with
  ``$DETECTRON2_DATASETS/aquarium/proposals_train.pkl``.
- ``aquarium_train_semantic``: the same, with the semantic proposals of a backbone,
  ``$DETECTRON2_DATASETS/aquarium/semantic_proposals_train.pkl`` (:data:`AQUARIUM_SEMANTIC_PROPOSALS`,
  ``tools/generate_proposals.py --from-features``; SimDETR's CPU recipe).

A full Imagenette or ImageNet registers the same way (:func:`register_class_folder_sets`).
"""
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from ..utils.atomic_io import atomic_write_json
from .builtin import datasets_root, shared_data_dir
from .image_list import IMAGE_EXTENSIONS
from .pretrain_datasets import register_soco_images

__all__ = [
    "shared_data_available",
    "CENTRAL_BOX_MARGIN",
    "central_box",
    "class_folder_json",
    "write_class_folder_json",
    "register_class_folder_sets",
    "register_real_photo_sets",
    "IMAGENETTE",
    "IMAGENETTE_PROPOSALS",
    "AQUARIUM",
    "AQUARIUM_PROPOSALS",
    "AQUARIUM_SEMANTIC_PROPOSALS",
]

IMAGENETTE = "imagenette_160"
AQUARIUM = "aquarium"
#: Proposal files, relative to $DETECTRON2_DATASETS.
IMAGENETTE_PROPOSALS = os.path.join(IMAGENETTE, "proposals_train.pkl")
AQUARIUM_PROPOSALS = os.path.join(AQUARIUM, "proposals_train.pkl")
AQUARIUM_SEMANTIC_PROPOSALS = os.path.join(AQUARIUM, "semantic_proposals_train.pkl")
#: Share of the image side left out on each side of the one box of a class-folder image.
CENTRAL_BOX_MARGIN = 0.05
#: The two halves of a labelled class-folder set: (suffix, which half of each class).
HALVES = (("select", 0), ("report", 1))


def shared_data_available(name: str) -> bool:
    """Whether the shared set ``name`` (a folder of :func:`shared_data_dir`) is present."""
    return os.path.isdir(shared_data_dir(name))


def central_box(width: int, height: int, margin: float = CENTRAL_BOX_MARGIN) -> List[float]:
    """The box of an image without ``margin`` of each side, COCO XYWH."""
    return [margin * width, margin * height, (1 - 2 * margin) * width, (1 - 2 * margin) * height]


def _class_files(split_root: str) -> Dict[str, List[str]]:
    """{class folder: sorted image file names} of a folder-per-class split."""
    if not os.path.isdir(split_root):
        raise FileNotFoundError(f"Image folder does not exist: {split_root}")
    classes = {}
    for wnid in sorted(os.listdir(split_root)):
        folder = os.path.join(split_root, wnid)
        if os.path.isdir(folder):
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            if files:
                classes[wnid] = files
    if not classes:
        raise ValueError(f"{split_root} has no class folder with images")
    return classes


def _class_names(names_file: Optional[str], wnids: Sequence[str]) -> Dict[str, str]:
    """Readable names from a ``<wnid>\\t<name>`` file when present, else the folder names."""
    names = {w: w for w in wnids}
    if names_file and os.path.isfile(names_file):
        with open(names_file) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] in names:
                    names[parts[0]] = parts[1]
    return names


def _image_size(path: str) -> Tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise ValueError(f"Cannot read the size of {path}: {e}") from e


def class_folder_json(split_root: str, names_file: Optional[str] = None,
                      half: Optional[int] = None) -> dict:
    """The COCO instances dict of a folder-per-class split (module docstring's rules).

    Args:
        split_root: folder holding one sub-folder of images per class.
        names_file: optional tab-separated ``folder<TAB>name`` file for the category names.
        half: None for every image; 0 or 1 for the first or second half of each class.
    """
    classes = _class_files(split_root)
    names = _class_names(names_file, list(classes))
    categories = [{"id": i + 1, "name": names[w], "wnid": w} for i, w in enumerate(classes)]
    per_class = []
    for cat, (wnid, files) in zip(categories, classes.items()):
        cut = (len(files) + 1) // 2
        if half is not None:
            files = files[:cut] if half == 0 else files[cut:]
        per_class.append([(cat["id"], os.path.join(wnid, f)) for f in files])
    images, annotations = [], []
    # Round-robin over the classes: any prefix of the ids holds every class about equally.
    for rank in range(max(len(c) for c in per_class)):
        for entries in per_class:
            if rank >= len(entries):
                continue
            category_id, file_name = entries[rank]
            image_id = len(images) + 1
            width, height = _image_size(os.path.join(split_root, file_name))
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            box = central_box(width, height)
            annotations.append({"id": image_id, "image_id": image_id, "category_id": category_id,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return {"info": {"description": f"one central box per image of {split_root}",
                     "soco_box": f"central {1 - 2 * CENTRAL_BOX_MARGIN:.0%} of the image",
                     "soco_half": "all" if half is None else HALVES[half][0]},
            "images": images, "annotations": annotations, "categories": categories}


def _listing_digest(split_root: str) -> str:
    classes = _class_files(split_root)
    text = "\n".join(f"{w}/{f}" for w, files in classes.items() for f in files)
    return hashlib.sha1(text.encode()).hexdigest()


def write_class_folder_json(split_root: str, json_file: str, names_file: Optional[str] = None,
                            half: Optional[int] = None) -> str:
    """Write (atomically, if missing or made from another image list) the json of
    :func:`class_folder_json`; return its path."""
    digest = _listing_digest(split_root)
    try:
        with open(json_file) as f:
            if json.load(f).get("info", {}).get("soco_listing_sha1") == digest:
                return json_file
    except (OSError, ValueError, AttributeError):
        pass
    data = class_folder_json(split_root, names_file, half)
    data["info"]["soco_listing_sha1"] = digest
    os.makedirs(os.path.dirname(json_file) or ".", exist_ok=True)
    atomic_write_json(json_file, data)
    return json_file


def _register_built_json(name: str, split_root: str, json_file: str, names_file: Optional[str],
                         half: Optional[int]) -> None:
    """A labelled detection set whose COCO json is built from class folders on first load."""
    if name in DatasetCatalog.list():
        return

    def load():
        write_class_folder_json(split_root, json_file, names_file, half)
        return load_coco_json(json_file, split_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=split_root, evaluator_type="coco")


def register_class_folder_sets(prefix: str, source_dir: str, cache_dir: str,
                               proposal_file: str, names_file: Optional[str] = None) -> None:
    """Register a folder-per-class photo set (``source_dir/{train,val}/<class>/*``) by name:
    ``<prefix>_train_soco`` (with ``proposal_file``), ``<prefix>_train_whole`` (no proposals),
    ``<prefix>_train_labelled``, ``<prefix>_val``, ``<prefix>_val_select`` and
    ``<prefix>_val_report``; labelled jsons are cached in ``cache_dir``. Names already
    registered are left alone.

    Example, a full ImageNet at ``/data/imagenet/{train,val}/<wnid>/*.JPEG``::

        register_class_folder_sets("imagenet", "/data/imagenet", "datasets/imagenet",
                                   "datasets/soco_proposals/imagenet_train.pkl")
    """
    train, val = os.path.join(source_dir, "train"), os.path.join(source_dir, "val")
    for name, proposals in ((f"{prefix}_train_soco", proposal_file), (f"{prefix}_train_whole", None)):
        if name not in DatasetCatalog.list():
            register_soco_images(name, train, proposals)
    _register_built_json(f"{prefix}_train_labelled", train,
                         os.path.join(cache_dir, "instances_train.json"), names_file, None)
    _register_built_json(f"{prefix}_val", val, os.path.join(cache_dir, "instances_val.json"),
                         names_file, None)
    for suffix, half in HALVES:
        _register_built_json(f"{prefix}_val_{suffix}", val,
                             os.path.join(cache_dir, f"instances_val_{suffix}.json"), names_file, half)


def register_real_photo_sets(root: str) -> None:
    """Register the Imagenette and Aquarium names of the module docstring (``root`` is
    $DETECTRON2_DATASETS, where proposals and built jsons go)."""
    imagenette = shared_data_dir(IMAGENETTE)
    register_class_folder_sets(IMAGENETTE, imagenette, os.path.join(root, IMAGENETTE),
                               os.path.join(root, IMAGENETTE_PROPOSALS),
                               os.path.join(imagenette, "classes.tsv"))
    aquarium = shared_data_dir(AQUARIUM)
    for split in ("train", "valid"):
        name = f"{AQUARIUM}_{split}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, os.path.join(aquarium, f"instances_{split}.json"), aquarium)
    for name, proposals in ((f"{AQUARIUM}_train_soco", AQUARIUM_PROPOSALS),
                            (f"{AQUARIUM}_train_semantic", AQUARIUM_SEMANTIC_PROPOSALS)):
        if name not in DatasetCatalog.list():
            register_soco_images(name, aquarium, os.path.join(root, proposals),
                                 os.path.join(aquarium, "instances_train.json"))


# Runs at import, like builtin.py: registration only, nothing is read.
register_real_photo_sets(datasets_root())
