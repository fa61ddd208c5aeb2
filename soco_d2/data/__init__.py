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
