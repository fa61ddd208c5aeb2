"""
Montage meta architecture (spec: ERF-adaptive dense classification): Detectron2's own ResNet
backbone and a 1 x 1 conv that classifies every location of its res5 output, trained with
ERF-adaptive soft labels (``soft_labels.py``) and the region-averaged soft cross-entropy
(``loss.py``).

Shape shorthand:
    N    montages in the batch
    S    canvas side (INPUT.MONTAGE.CANVAS_SIZE)
    D    channels of the classified feature (2048 for R50 res5, 512 for R18)
    h, w its spatial size, S / stride (7 x 7 for a 224 canvas at stride 32)
    R    regions per montage (4)
    C    logits: NUM_CLASSES + 1, background last
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone import Backbone

from ...evaluation.probe import BoxFeatureTrunk, fpn_box_pooler
from .loss import region_averaged_soft_ce
from .mapper import NUM_PIECES
from .soft_labels import own_regions, region_fractions, region_weights, soft_targets

__all__ = ["Montage", "read_detector_backbone_names"]


def read_detector_backbone_names(state_dict: dict, prefix: str = "") -> None:
    """Rename, in place, a detector trunk's ResNet keys to a plain ResNet backbone's.

    An FPN detector (or a SoCo FPN trunk) names its ResNet ``backbone.bottom_up.*`` and a C4
    one keeps res5 in ``roi_heads.res5.*``; the Montage backbone is ``backbone.*`` with res5 in
    it. Keys already present under the plain name win (a Montage export carries both names).
    """
    for old, new in (("backbone.bottom_up.", "backbone."), ("roi_heads.res5.", "backbone.res5.")):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            value = state_dict.pop(key)
            state_dict.setdefault(prefix + new + key[len(prefix + old):], value)


@META_ARCH_REGISTRY.register()
class Montage(nn.Module):
    """
    Montage pretraining model (Zhou et al., ECCV 2020; MONTAGE_SPEC.md).

    ``backbone`` (Detectron2's ``build_backbone``: a ResNet whose ``in_feature`` output, res5, is
    classified) -> ``dense_classifier`` (1 x 1 conv, D -> C). Only ``backbone.*`` is handed to a
    detector (``export.py``); ``dense_classifier`` is pretraining-only.

    Input: N dicts from :class:`MontageDatasetMapper` (``image`` uint8 (3, S, S), ``regions``
    (S, S), ``labels`` (R,), ``refs`` (R, 2)). A label -1 is a pseudo-class, read from the table
    set by :meth:`set_pseudo_labels` at ``refs`` (label-free variant).

    Output in training: ``{"loss_montage": scalar}``; in eval mode: one dict per montage with
    its ``logits`` (C, h, w) and soft ``targets`` (h, w, C).

    Loading weights: ``backbone.bottom_up.*`` (FPN detectors, SoCo FPN trunks) and
    ``roi_heads.res5.*`` (C4) are read as this backbone's keys
    (:func:`read_detector_backbone_names`), so MODEL.WEIGHTS may be a SoCo trunk.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, in_feature: str, num_classes: int, tau: float,
                 erf_sigma: float, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        """
        Args:
            backbone: a Detectron2 Backbone with output ``in_feature``.
            in_feature: the output classified at every location (res5).
            num_classes: NUM_CLASSES; the classifier has NUM_CLASSES + 1 outputs.
            tau: floor of the own-region weight.
            erf_sigma: sigma in input pixels of the Gaussian ERF.
            pixel_mean, pixel_std: per-channel normalisation in INPUT.FORMAT order.
        """
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        shape = backbone.output_shape()[in_feature]
        self.stride = shape.stride
        self.num_logits = num_classes + 1
        self.dense_classifier = nn.Conv2d(shape.channels, self.num_logits, kernel_size=1)
        nn.init.normal_(self.dense_classifier.weight, std=0.01)
        nn.init.zeros_(self.dense_classifier.bias)
        self.tau = float(tau)
        self.erf_sigma = float(erf_sigma)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._register_load_state_dict_pre_hook(self._read_trunk_names)
        self._pseudo: Optional[Dict[str, torch.Tensor]] = None
        self._monitors: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MONTAGE
        return {
            "backbone": build_backbone(cfg),
            "in_feature": m.IN_FEATURE,
            "num_classes": m.NUM_CLASSES,
            "tau": m.TAU,
            "erf_sigma": m.ERF_SIGMA,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @staticmethod
    def _read_trunk_names(state_dict, prefix, *args):
        read_detector_backbone_names(state_dict, prefix)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ pseudo-classes
    def set_pseudo_labels(self, labels: torch.Tensor, offsets: torch.Tensor) -> None:
        """The label-free table: box b of record i has pseudo-class ``labels[offsets[i] + b]``."""
        self._pseudo = {"labels": labels.to(torch.int64).cpu(), "offsets": offsets.to(torch.int64).cpu()}

    def _resolve(self, labels: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        pseudo = labels < 0
        if not pseudo.any():
            return labels
        if self._pseudo is None:
            raise RuntimeError(
                "Montage got pseudo-class pieces but no pseudo-label table: the label-free "
                "variant needs the PseudoLabelHook of MontageTrainer (or set_pseudo_labels)"
            )
        rows = self._pseudo["offsets"][refs[..., 0]] + refs[..., 1]
        return torch.where(pseudo, self._pseudo["labels"][rows.clamp(min=0)], labels)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: N mapper dicts (class docstring).

        Returns:
            training: {"loss_montage": scalar}; eval: N dicts with ``logits`` and ``targets``.
        """
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device).float()
        images = (images - self.pixel_mean) / self.pixel_std
        logits = self.dense_classifier(self.backbone(images)[self.in_feature])  # (N, C, h, w)
        grid = tuple(logits.shape[-2:])

        with torch.no_grad():
            labels = torch.stack([x["labels"] for x in batched_inputs])
            refs = torch.stack([x["refs"] for x in batched_inputs])
            labels = self._resolve(labels, refs).to(self.device)
            regions = torch.stack([x["regions"] for x in batched_inputs]).to(self.device)
            assert grid[0] * self.stride == regions.shape[1], (grid, self.stride, regions.shape)
            own = own_regions(regions, grid, self.stride)
            weights = region_weights(
                region_fractions(regions, NUM_PIECES, grid, self.stride, self.erf_sigma), own, self.tau
            )
            targets = soft_targets(weights, labels, self.num_logits).float()  # (N, h, w, C)

        if not self.training:
            return [{"logits": lg, "targets": t} for lg, t in zip(logits, targets)]
        loss = region_averaged_soft_ce(logits, targets, own, NUM_PIECES)
        self._monitors = self._learning_monitors(logits.detach(), targets, weights, own, labels)
        return {"loss_montage": loss}

    @torch.no_grad()
    def _learning_monitors(self, logits, targets, weights, own, labels) -> Dict[str, torch.Tensor]:
        own_label = torch.gather(labels, 1, own.flatten(1)).view_as(own)
        predicted = logits.argmax(dim=1)
        entropy = -(targets * targets.clamp(min=1e-12).log()).sum(dim=-1)
        own_weight = torch.gather(weights, -1, own[..., None]).squeeze(-1)
        return {
            "montage/accuracy": (predicted == own_label).float().mean(),
            "montage/target_entropy": entropy.mean(),
            "montage/own_weight": own_weight.float().mean(),
            "montage/background_regions": (labels == self.num_logits - 1).float().mean(),
        }

    def monitors(self) -> Dict[str, torch.Tensor]:
        """The learning monitors of the last training forward (engine/monitors.py logs them):
        ``montage/accuracy`` (per location, argmax against the label of the location's own
        region), ``montage/target_entropy`` (mean entropy of the soft labels, nats),
        ``montage/own_weight`` (mean w_r) and ``montage/background_regions`` (share of
        background pieces)."""
        return dict(self._monitors)

    def probe_trunk(self) -> BoxFeatureTrunk:
        """The backbone as a box-feature trunk for the probe and the label-free clustering:
        RoIAlign (7 x 7, ROIAlignV2) on ``in_feature``, averaged; no box head. Not a copy."""
        mean, std = self.pixel_mean.flatten().tolist(), self.pixel_std.flatten().tolist()
        pooler = fpn_box_pooler(self.backbone, [self.in_feature])
        return BoxFeatureTrunk(self.backbone, [self.in_feature], pooler, None, mean, std)
