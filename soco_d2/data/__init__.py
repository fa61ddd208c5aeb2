"""Data every pretraining method shares.

- Pretraining datasets: any image folder or COCO json plus its proposal file
  (``pretrain_datasets.py``, ids from ``image_list.py``); built-in names (``builtin.py``,
  ``coco_sample.py``, ``real_photos.py``), registered on import.
- Training data: the deterministic (seed, sample number) stream (``sample_stream.py``) and the
  loader that runs a method's mapper over it (``loader.py``).
- What mappers are made of: image decoding (``decode.py``), view and box geometry
  (``box_ops.py``), colour augmentation (``color_augment.py``).
- Offline: unsupervised proposals (``proposals/``) and the embedded synthetic scenes
  (``synthetic/``).
"""
from .pretrain_datasets import (
    attach_proposals,
    load_soco_images,
    num_images,
    register_datasets_from_cfg,
    register_soco_images,
)
from .image_list import list_coco_images, list_image_folder

from . import builtin  # noqa: F401  (registers the built-in dataset names)
from . import coco_sample  # noqa: F401  (registers coco_sample_train / _val / _soco)
from . import real_photos  # noqa: F401  (registers the imagenette_160_* and aquarium_* names)
