"""The 100-image COCO sample (``../shared/data/coco_sample``) as detection and pretraining sets.

Source: ``$SOCO_COCO_SAMPLE`` if set, else ``<repo>/../shared/data/coco_sample``, holding
``instances.json`` (COCO format) and ``images/``.

Split rule (fixed, label-free): sort the image ids ascending; the image at sorted position i
goes to val when ``i % 5 == 4``, else to train. The sample's 100 images give 80 train / 20 val.

Registered names (nothing is read at registration):

- ``coco_sample_train`` / ``coco_sample_val``: detection sets (evaluator_type "coco"). On first
  load, both split jsons are written atomically to
  ``$DETECTRON2_DATASETS/coco_sample_split/instances_{train,val}.json`` (rewritten when the
  source json changes); ``MetadataCatalog`` points ``json_file`` at them, so COCOEvaluator
  scores val against val's own annotations.
- ``coco_sample_soco``: pretraining records of the 80 TRAIN images only (labels ignored), with
  proposals from ``$DETECTRON2_DATASETS/soco_proposals/coco_sample_train.pkl``, so pretraining
  never sees a val image. To make that file::

      python -m soco_d2.data.coco_sample   # writes the split jsons, prints the paths
      python tools/generate_proposals.py --coco-json <root>/coco_sample_split/instances_train.json \\
          --image-root <sample>/images --output <root>/soco_proposals/coco_sample_train.pkl
"""
import hashlib
import json
import os
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..utils.atomic_io import atomic_write_json
from .builtin import datasets_root, shared_data_dir
from .pretrain_datasets import load_soco_images

__all__ = [
    "coco_sample_dir",
    "coco_sample_split_paths",
    "split_image_ids",
    "write_coco_sample_splits",
    "register_coco_sample",
]

SPLIT_DIRNAME = "coco_sample_split"
PROPOSAL_FILE = os.path.join("soco_proposals", "coco_sample_train.pkl")
VAL_EVERY = 5  # every 5th image (sorted position % 5 == 4) is a val image


def coco_sample_dir() -> str:
    """``$SOCO_COCO_SAMPLE``, or ``coco_sample`` of the shared data (``builtin.shared_data_dir``)."""
    env = os.getenv("SOCO_COCO_SAMPLE")
    return os.path.expanduser(env) if env else shared_data_dir("coco_sample")


def coco_sample_split_paths(datasets_root: str) -> Dict[str, str]:
    """{"train": json, "val": json} of the split files under ``datasets_root``."""
    folder = os.path.join(datasets_root, SPLIT_DIRNAME)
    return {s: os.path.join(folder, f"instances_{s}.json") for s in ("train", "val")}


def split_image_ids(image_ids) -> Tuple[List[int], List[int]]:
    """(train ids, val ids) by the rule of the module docstring; both sorted."""
    ordered = sorted(image_ids)
    val = [i for n, i in enumerate(ordered) if n % VAL_EVERY == VAL_EVERY - 1]
    val_set = set(val)
    return [i for i in ordered if i not in val_set], val


def _split_is_current(path: str, digest: str) -> bool:
    try:
        with open(path) as f:
            return json.load(f).get("info", {}).get("soco_source_sha1") == digest
    except (OSError, ValueError, AttributeError):
        return False


def write_coco_sample_splits(source_dir: str, datasets_root: str) -> Dict[str, str]:
    """Write (if missing or stale) the train/val jsons of the sample; return their paths.

    Each is the source json restricted to its images and their annotations; ``info`` records
    the split rule and the sha1 of the source json, which decides staleness.

    Raises:
        FileNotFoundError: ``source_dir/instances.json`` does not exist.
    """
    src = os.path.join(source_dir, "instances.json")
    if not os.path.isfile(src):
        raise FileNotFoundError(
            f"COCO sample not found: {src} does not exist (set $SOCO_COCO_SAMPLE to the folder "
            "holding instances.json and images/)"
        )
    with open(src, "rb") as f:
        raw = f.read()
    digest = hashlib.sha1(raw).hexdigest()
    paths = coco_sample_split_paths(datasets_root)
    if all(_split_is_current(p, digest) for p in paths.values()):
        return paths

    data = json.loads(raw)
    ids = dict(zip(("train", "val"), split_image_ids(img["id"] for img in data["images"])))
    os.makedirs(os.path.dirname(paths["train"]), exist_ok=True)
    for split, keep in ids.items():
        keep = set(keep)
        info = dict(data.get("info", {}))
        info.update(
            soco_split=f"{split}: image ids sorted, position % {VAL_EVERY} == {VAL_EVERY - 1} -> val",
            soco_source_sha1=digest,
        )
        out = {k: v for k, v in data.items() if k not in ("images", "annotations", "info")}
        out["info"] = info
        out["images"] = [img for img in data["images"] if img["id"] in keep]
        out["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        atomic_write_json(paths[split], out)
    return paths


def register_coco_sample(datasets_root: str, source_dir: str = None) -> None:
    """Register ``coco_sample_train``, ``coco_sample_val`` and ``coco_sample_soco``.

    Names already registered are left alone (calling twice is a no-op).
    """
    source_dir = source_dir or coco_sample_dir()
    image_root = os.path.join(source_dir, "images")
    paths = coco_sample_split_paths(datasets_root)

    def load_split(split: str, name: str) -> List[dict]:
        write_coco_sample_splits(source_dir, datasets_root)
        # Also sets thing_classes / thing_dataset_id_to_contiguous_id in the metadata.
        return load_coco_json(paths[split], image_root, name)

    for split in ("train", "val"):
        name = f"coco_sample_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda split=split, name=name: load_split(split, name))
        MetadataCatalog.get(name).set(json_file=paths[split], image_root=image_root, evaluator_type="coco")

    name = "coco_sample_soco"
    if name not in DatasetCatalog.list():
        proposal_file = os.path.join(datasets_root, PROPOSAL_FILE)

        def load_pretraining() -> List[dict]:
            write_coco_sample_splits(source_dir, datasets_root)
            return load_soco_images(image_root, proposal_file, paths["train"])

        DatasetCatalog.register(name, load_pretraining)
        MetadataCatalog.get(name).set(image_root=image_root, proposal_file=proposal_file)


# Runs at import, like builtin.py: registration only, nothing is read.
register_coco_sample(datasets_root())

if __name__ == "__main__":
    for split, path in write_coco_sample_splits(coco_sample_dir(), datasets_root()).items():
        print(f"{split}: {path}")
