"""Dataset names that work out of the box, rooted at $DETECTRON2_DATASETS (default ./datasets).

Pretraining sets (images + proposals, labels ignored):

- ``soco_synthetic_train``: the embedded synthetic scenes (``make demo`` writes them).
- ``imagenet_train_soco``: ``imagenet/train/**`` with ``soco_proposals/imagenet_train.pkl``.
- ``coco_2017_train_soco``: COCO train2017 images with ``soco_proposals/coco_2017_train.pkl``.
- ``coco_2017_train_semantic``: the same images with the semantic proposals of a backbone,
  ``soco_proposals/coco_2017_train_semantic.pkl`` (``tools/generate_proposals.py --from-features``;
  SimDETR's published-scale config).

Detection sets with labels (for fine-tuning, evaluation and the probe):

- ``soco_synthetic_det_train`` / ``soco_synthetic_det_val``: all train / val scenes.
- ``soco_synthetic_det_train_100``: the low-label split, the first 100 train scenes (by image
  id) with their labels; pretraining uses all train scenes without labels.
- ``soco_synthetic_det_val_20``: the first 20 val scenes, for smoke tests of the transfer
  benchmarks (``--quick``), where evaluating all 200 would take most of the time.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from .pretrain_datasets import register_soco_images
from .synthetic import SYNTHETIC_CATEGORIES, synthetic_split_paths

SYNTHETIC_DIRNAME = "soco_synthetic"
#: Labelled train scenes of the low-label fine-tuning split ``soco_synthetic_det_train_100``.
LOW_LABEL_IMAGES = 100
#: Val scenes of the smoke-test split ``soco_synthetic_det_val_20``.
SMOKE_VAL_IMAGES = 20


def datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def shared_data_dir(name: str = "") -> str:
    """``$SOCO_SHARED_DATA/<name>``, or ``<repo>/../shared/data/<name>``: where the real-photo
    sets (coco_sample, imagenette_160, aquarium) are read from, never copied."""
    root = os.getenv("SOCO_SHARED_DATA")
    if not root:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        root = os.path.join(os.path.dirname(repo), "shared", "data")
    root = os.path.expanduser(root)
    return os.path.join(root, name) if name else root


def synthetic_proposal_file(root: str, split: str) -> str:
    return os.path.join(root, SYNTHETIC_DIRNAME, f"proposals_{split}.pkl")


def register_coco_subset(name: str, metadata: dict, json_file: str, image_root: str,
                         num_images: int) -> None:
    """Register the first ``num_images`` images (by image id) of a COCO json, with their
    annotations, as detection set ``name`` (like ``register_coco_instances``)."""

    def load():
        records = load_coco_json(json_file, image_root, name)
        return sorted(records, key=lambda r: r["image_id"])[:num_images]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **metadata)


def register_all_builtin(root: str) -> None:
    syn = os.path.join(root, SYNTHETIC_DIRNAME)
    for split in ("train", "val"):
        json_file, image_root = synthetic_split_paths(syn, split)
        register_soco_images(
            f"soco_synthetic_{split}", image_root, synthetic_proposal_file(root, split), json_file
        )
        meta = {
            "thing_classes": [c["name"] for c in SYNTHETIC_CATEGORIES],
            "thing_dataset_id_to_contiguous_id": {
                c["id"]: i for i, c in enumerate(SYNTHETIC_CATEGORIES)
            },
        }
        register_coco_instances(f"soco_synthetic_det_{split}", meta, json_file, image_root)
        if split == "train":
            register_coco_subset(f"soco_synthetic_det_train_{LOW_LABEL_IMAGES}", meta, json_file,
                                 image_root, LOW_LABEL_IMAGES)
        else:
            register_coco_subset(f"soco_synthetic_det_val_{SMOKE_VAL_IMAGES}", meta, json_file,
                                 image_root, SMOKE_VAL_IMAGES)

    register_soco_images(
        "imagenet_train_soco",
        os.path.join(root, "imagenet", "train"),
        os.path.join(root, "soco_proposals", "imagenet_train.pkl"),
    )
    register_soco_images(
        "coco_2017_train_soco",
        os.path.join(root, "coco", "train2017"),
        os.path.join(root, "soco_proposals", "coco_2017_train.pkl"),
        os.path.join(root, "coco", "annotations", "instances_train2017.json"),
    )
    register_soco_images(
        "coco_2017_train_semantic",
        os.path.join(root, "coco", "train2017"),
        os.path.join(root, "soco_proposals", "coco_2017_train_semantic.pkl"),
        os.path.join(root, "coco", "annotations", "instances_train2017.json"),
    )


# Runs at import, like detectron2.data.datasets.builtin: registration only, nothing is read.
register_all_builtin(datasets_root())
