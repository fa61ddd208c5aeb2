"""SimDETR's R-CNN: Detectron2's GeneralizedRCNN (Faster R-CNN FPN), trained by its own losses.

Nothing of the detector changes: ``SimDETRRCNN`` is ``GeneralizedRCNN`` built by its own
``from_config`` (backbone with FPN, ``RPN``, ``StandardROIHeads`` with the 4conv1fc box head and
a K + 1-way classifier, K = MODEL.ROI_HEADS.NUM_CLASSES pseudo-classes), fed Detectron2's
``DatasetMapper`` output of the pseudo-label json, returning Detectron2's losses
(``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``); the backbone is trained. It
exists under its own name for three reasons only: ``train_net.py`` picks SimDETR's trainer by
MODEL.META_ARCHITECTURE; the one buffer it adds, ``simdetr_round`` (the round being trained),
marks its checkpoints for the exporter and is never exported; and it offers what the
detector-agnostic rounds ask of a model (``feature_extractor``, ``probe_trunk``).
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ...data.proposals.semantic import FeatureMapExtractor
from ...evaluation.probe import BoxFeatureTrunk, trunk_from_detector

__all__ = ["SimDETRRCNN"]


@META_ARCH_REGISTRY.register()
class SimDETRRCNN(GeneralizedRCNN):
    """GeneralizedRCNN trained on pseudo-labels (module docstring).

    Forward: exactly GeneralizedRCNN's (training: ``batched_inputs`` from ``DatasetMapper`` with
    ``instances``; eval: ``[{"instances"}]`` in original pixels).
    """

    @configurable
    def __init__(self, *, feature: str = "res4", image_format: str = "RGB", test_sizes=(800, 1333),
                 **detector):
        """
        Args:
            feature: the ResNet output pseudo-classes are clustered from (MODEL.SIMDETR.FEATURE).
            image_format: INPUT.FORMAT.
            test_sizes: (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST), the size images are clustered
                and detected at between rounds.
            detector: GeneralizedRCNN's arguments.
        """
        super().__init__(**detector)
        self.feature = feature
        self.image_format = image_format
        self.test_sizes = tuple(int(s) for s in test_sizes)
        self.register_buffer("simdetr_round", torch.zeros((), dtype=torch.int64))

    @classmethod
    def from_config(cls, cfg):
        ret = GeneralizedRCNN.from_config(cfg)
        ret.update(feature=cfg.MODEL.SIMDETR.FEATURE, image_format=cfg.INPUT.FORMAT,
                   test_sizes=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
        return ret

    def feature_extractor(self) -> FeatureMapExtractor:
        """The map pseudo-classes are clustered from: ``feature`` of the FPN's ResNet
        (``backbone.bottom_up``), at the test size (not copied: the weights being trained)."""
        return FeatureMapExtractor(self.backbone.bottom_up, self.feature, self.pixel_mean.flatten().tolist(),
                                   self.pixel_std.flatten().tolist(), self.image_format, *self.test_sizes)

    def probe_trunk(self) -> BoxFeatureTrunk:
        """The detector's box-feature path (backbone, pooler, box head), for the probe."""
        return trunk_from_detector(self)
