"""soco-d2: label-free pretraining of whole detectors inside Detectron2.

Importing ``soco_d2`` registers everything it defines with Detectron2: the built-in datasets
(DatasetCatalog) and every method's meta-architecture (META_ARCH_REGISTRY).

Pieces every method shares:

- ``config``: the shared keys, YAML loading with model-zoo bases, checks.
- ``data``: pretraining datasets and their deterministic sample stream, the loader, image
  decoding, unsupervised proposals, box/view geometry, colour augmentation, synthetic data.
- ``modeling``: the momentum target, MLP heads, init tricks, detector heads for transfer.
- ``evaluation``: the probe (kNN / linear accuracy of a trunk's box features).
- ``solver``: LARS, the optimizer, epochs -> iterations.
- ``engine``: PretrainTrainer and its hooks, DDP on CPU, atomic checkpoints, DetectionTrainer.
- ``export``: trunk export driven by each method's declaration.
- ``utils``: atomic file writes.

Methods, one folder each, registered by MODEL.META_ARCHITECTURE (``soco_d2.methods``, whose
:func:`add_config` adds the shared keys and every method's):

- ``methods/soco``: SoCo (Wei et al., NeurIPS 2021).
- ``methods/aligndet``: AlignDet box-domain pretraining (Li et al., ICCV 2023).
- ``methods/montage``: Montage pretraining (Zhou et al., ECCV 2020) and its label-free variant.
- ``methods/simdetr``: SimDETR-style self-training pretraining (Metaxas et al., 2023) of a
  Detectron2 R-CNN on semantic proposals and cluster pseudo-classes.
"""
from .methods import add_config, get_method, registered_methods

from . import data  # noqa: F401  (registers the built-in datasets in DatasetCatalog)
from . import modeling  # noqa: F401  (registers the transfer heads in ROI_HEADS_REGISTRY)
from .methods import soco  # noqa: F401  (registers the SoCo method and meta-architecture)
from .methods.soco import add_soco_config
from .methods import aligndet  # noqa: F401  (registers AlignDetRCNN and AlignDetRetinaNet)
from .methods.aligndet import add_aligndet_config
from .methods import montage  # noqa: F401  (registers the Montage method and meta-architecture)
from .methods.montage import add_montage_config
from .methods import simdetr  # noqa: F401  (registers the SimDETR method and SimDETRRCNN)
from .methods.simdetr import add_simdetr_config

__version__ = "0.1.0"
