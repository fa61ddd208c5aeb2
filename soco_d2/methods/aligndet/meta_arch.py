"""
AlignDet meta-architectures: box-domain pretraining of a whole detector except its backbone
(ALIGNDET_SPEC.md, Networks, Assignment, Losses).

``AlignDetRCNN`` is a Detectron2 ``GeneralizedRCNN`` (FPN backbone, ``RPN``, ``StandardROIHeads``
with its box head) and ``AlignDetRetinaNet`` a Detectron2 ``RetinaNet``, built by Detectron2's own
``from_config``; the only module that changes is the classifier, replaced by a projection MLP
(``roi_heads.box_predictor.cls_score`` / ``head.cls_score``). Module names are therefore
Detectron2's, and the trained FPN, RPN and box head / RetinaNet subnets load by name into stock
detectors (``export.py``). Both have:

- a frozen backbone (``MODEL.ALIGNDET.FREEZE_BACKBONE``): the bottom-up network of the FPN,
  BatchNorm turned into FrozenBN, no gradient, shared by online and target;
- a momentum target (:class:`soco_d2.modeling.MomentumTarget`): copies of the FPN layers and
  heads under ``target.*``, updated by EMA (0.996 -> 1, cosine) after each step;
- view 1 through the online network, view 2 through the target (no gradient), pseudo-boxes as
  class-agnostic ground truth with an instance id each, unique within the batch.

Shape shorthand:
    N    images in the batch (two views each)
    B_i  pseudo-boxes of image i (the same in both views)
    R    foreground RoIs (R-CNN) or sampled positive anchors (RetinaNet), all images together
    D    embedding dimension (MODEL.ALIGNDET.EMBED_DIM)
    A    anchors per location (RetinaNet)
"""
import logging
from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d, cat
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import EventStorage, get_event_storage

from ...evaluation.probe import BoxFeatureTrunk, trunk_from_detector
from ...modeling import MLPHead, MomentumTarget
from .loss import info_nce

__all__ = ["AlignDetRCNN", "AlignDetRetinaNet", "ConvProjector", "batch_instance_ids"]

logger = logging.getLogger(__name__)


class ConvProjector(nn.Module):
    """RetinaNet's projection head in place of ``cls_score``: 1x1 conv -> ReLU -> 1x1 conv to
    ``num_anchors * embed_dim`` channels, i.e. one D-dim embedding per anchor."""

    def __init__(self, in_channels: int, hidden_dim: int, num_anchors: int, embed_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden_dim, num_anchors * embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, A * D, H, W)."""
        return self.conv2(self.relu(self.conv1(x)))


class _BackboneFeatures(nn.Module):
    """Stands in for the frozen bottom-up network inside the target's FPN: the target is given
    the features the shared backbone already computed, and passes them on."""

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return features


def batch_instance_ids(views: List[dict]) -> List[torch.Tensor]:
    """Per image, the ids of its pseudo-boxes made unique within the batch: image i's ids are
    offset by the sum over earlier images of (their largest id + 1). Same for both views."""
    out, offset = [], 0
    for view in views:
        ids = torch.as_tensor(view["ids"], dtype=torch.int64)
        out.append(ids + offset)
        offset += int(ids.max()) + 1 if len(ids) else 0
    return out


class _AlignDetMixin(MomentumTarget):
    """What both meta-architectures share: the frozen backbone, the target, pseudo-box ground
    truth, the InfoNCE call and the monitors. The host class is a Detectron2 detector with
    ``backbone``, ``preprocess_image`` and ``device``."""

    def _setup_alignment(self, target_parts, *, freeze_backbone: bool, momentum: float,
                         temperature: float, regression: bool, contrast_weight: float,
                         regression_weight: float) -> None:
        self.freeze_backbone = freeze_backbone
        replace = None
        if freeze_backbone:
            bottom_up = getattr(self.backbone, "bottom_up", None)
            assert bottom_up is not None, "a frozen backbone needs an FPN (backbone.bottom_up)"
            FrozenBatchNorm2d.convert_frozen_batchnorm(bottom_up)
            bottom_up.requires_grad_(False)
            replace = {bottom_up: _BackboneFeatures()}
        self.temperature = temperature
        self.regression = regression
        self.contrast_weight = contrast_weight
        self.regression_weight = regression_weight
        self.init_target(target_parts, momentum, replace=replace)
        self._monitors: Dict[str, torch.Tensor] = {}

    def _target_features(self, images: ImageList) -> Dict[str, torch.Tensor]:
        """The target backbone's features (no gradient): the frozen bottom-up network is the
        online one, the FPN layers are the target's."""
        if self.freeze_backbone:
            return self.target["backbone"](self.backbone.bottom_up(images.tensor))
        return self.target["backbone"](images.tensor)

    def _pseudo_gt(self, views: List[dict], images: ImageList, ids: List[torch.Tensor]):
        """Pseudo-boxes as Detectron2 ground truth: gt_boxes, gt_classes (all 0), gt_ids."""
        out = []
        for view, size, image_ids in zip(views, images.image_sizes, ids):
            boxes = view["boxes"]
            boxes = boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes)
            gt = Instances(size)
            gt.gt_boxes = Boxes(boxes.to(self.device, torch.float32))
            gt.gt_classes = torch.zeros(len(boxes), dtype=torch.int64, device=self.device)
            gt.gt_ids = image_ids.to(self.device)
            out.append(gt)
        return out

    def _views(self, batched_inputs: List[dict]):
        """(view-1 inputs, view-2 inputs, images 1, images 2, ground truth 1, ground truth 2)."""
        v1 = [x["views"][0] for x in batched_inputs]
        v2 = [x["views"][1] for x in batched_inputs]
        ids = batch_instance_ids(v1)
        images1, images2 = self.preprocess_image(v1), self.preprocess_image(v2)
        return v1, v2, images1, images2, self._pseudo_gt(v1, images1, ids), self._pseudo_gt(v2, images2, ids)

    def _view1_gt(self, batched_inputs: List[dict]):
        """Eval mode: view-1 images and their pseudo-boxes (ids as the mapper gave them)."""
        v1 = [x["views"][0] for x in batched_inputs]
        images = self.preprocess_image(v1)
        return images, self._pseudo_gt(v1, images, [torch.as_tensor(v["ids"]) for v in v1])

    def _contrast(self, out: dict, prefix: str) -> torch.Tensor:
        loss, stats = info_nce(out["queries"], out["query_ids"], out["keys"], out["key_ids"],
                               self.temperature, out.get("extra_negatives"))
        self._monitors = {f"aligndet/{k}": v for k, v in stats.items()}
        self._monitors[f"aligndet/{prefix}_per_image"] = torch.tensor(out["num_queries_per_image"])
        return loss * self.contrast_weight

    def monitors(self) -> Dict[str, torch.Tensor]:
        """The learning monitors of the last training forward (engine/monitors.py logs them):
        ``aligndet/accuracy`` (fraction of queries whose most similar candidate is a positive),
        ``aligndet/pos_sim`` and ``aligndet/neg_sim`` (mean cosines), ``aligndet/num_ids``
        (instances with a query) and the queries per image (``fg_rois_per_image`` or
        ``pos_anchors_per_image``)."""
        return dict(self._monitors)

    def probe_trunk(self) -> BoxFeatureTrunk:
        """The online trunk as the detector will use it, for the probe (engine/monitors.py)."""
        return trunk_from_detector(self)


def _alignment_args(cfg) -> dict:
    """The __init__ arguments both meta-architectures read from MODEL.ALIGNDET."""
    a = cfg.MODEL.ALIGNDET
    return dict(freeze_backbone=a.FREEZE_BACKBONE, momentum=a.MOMENTUM, temperature=a.TEMPERATURE,
                regression=a.REGRESSION, contrast_weight=a.CONTRAST_WEIGHT,
                regression_weight=a.REGRESSION_WEIGHT)


def _quiet_storage():
    """An event storage that swallows what the target's Detectron2 modules log (RPN anchor and
    RoI sample counts), so metrics hold the online network's values."""
    try:
        return EventStorage(get_event_storage().iter)
    except AssertionError:  # outside a trainer
        return EventStorage()


@META_ARCH_REGISTRY.register()
class AlignDetRCNN(_AlignDetMixin, GeneralizedRCNN):
    """
    AlignDet pretraining of a Faster / Mask R-CNN (FPN): FPN, RPN and box head (with a
    class-agnostic box regressor), the backbone frozen. The mask head is not pretrained.

    Input: N dicts from :class:`soco_d2.methods.aligndet.mapper.AlignDetDatasetMapper`.

    Training output: ``loss_rpn_cls``, ``loss_rpn_loc`` (Detectron2's RPN losses on the view-1
    pseudo-boxes), ``loss_contrast`` (InfoNCE of the online view-1 foreground RoI embeddings
    against the target view-2 ones) and ``loss_box_reg`` (L1 on the box deltas of the view-1
    foreground RoIs toward their pseudo-box; absent with ``regression=False``).

    Foreground RoIs: the RPN proposals plus the pseudo-boxes, matched to the pseudo-boxes by
    Detectron2's ``label_and_sample_proposals`` (IoU >= MODEL.ROI_HEADS.IOU_THRESHOLDS, up to
    BATCH_SIZE_PER_IMAGE with POSITIVE_FRACTION 1.0); each takes its pseudo-box's instance id;
    background RoIs are dropped.

    Eval mode: per image ``{"embeddings": (B_i, D), "deltas": (B_i, 4), "ids": (B_i,)}`` of the
    view-1 pseudo-boxes through the online network (the target is not run).
    """

    @configurable
    def __init__(self, *, projector: nn.Module, freeze_backbone: bool = True, momentum: float = 0.996,
                 temperature: float = 0.5, regression: bool = True, contrast_weight: float = 1.0,
                 regression_weight: float = 1.0, **detector):
        """
        Args:
            projector: the projection MLP that replaces ``roi_heads.box_predictor.cls_score``.
            freeze_backbone: freeze the FPN's bottom-up network and share it with the target.
            momentum: the target's momentum at the first iteration (the trainer's schedule).
            temperature: InfoNCE temperature.
            regression: add the L1 box regression loss.
            contrast_weight, regression_weight: loss weights.
            detector: GeneralizedRCNN's arguments (backbone, proposal_generator, roi_heads, ...).
        """
        super().__init__(**detector)
        self.roi_heads.box_predictor.cls_score = projector
        self._setup_alignment(
            ("backbone", "proposal_generator", "roi_heads"), freeze_backbone=freeze_backbone,
            momentum=momentum, temperature=temperature, regression=regression,
            contrast_weight=contrast_weight, regression_weight=regression_weight,
        )

    @classmethod
    def from_config(cls, cfg):
        ret = GeneralizedRCNN.from_config(cfg)
        a = cfg.MODEL.ALIGNDET
        in_dim = ret["roi_heads"].box_predictor.cls_score.in_features
        ret.update(_alignment_args(cfg), projector=MLPHead(in_dim, a.PROJ_HIDDEN_DIM, a.EMBED_DIM, norm=""))
        return ret

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def foreground_rois(roi_heads, proposals: List[Instances], gt: List[Instances]) -> List[Instances]:
        """Detectron2's proposal labelling and sampling (pseudo-boxes appended, IoU matching),
        keeping the foreground RoIs: fields proposal_boxes, gt_boxes, gt_classes, gt_ids."""
        sampled = roi_heads.label_and_sample_proposals(proposals, gt)
        return [p[p.gt_classes < roi_heads.num_classes] for p in sampled]

    @staticmethod
    def embed_rois(roi_heads, features: Dict[str, torch.Tensor], rois: List[Instances]):
        """(R, D) embeddings and (R, 4) box deltas of ``rois``: pooler, box head, predictor
        (whose classifier is the projection MLP)."""
        x = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features],
                                 [r.proposal_boxes for r in rois])
        return roi_heads.box_predictor(roi_heads.box_head(x))

    def training_outputs(self, batched_inputs: List[dict]) -> dict:
        """Everything the training forward computes: ``rpn_losses``, the online view-1
        foreground ``rois`` with their ``queries`` (R, D), ``query_ids`` and ``deltas``
        (R, 4), and the target view-2 ``keys`` and ``key_ids``. Needs an EventStorage."""
        v1, v2, images1, images2, gt1, gt2 = self._views(batched_inputs)
        features1 = self.backbone(images1.tensor)
        proposals1, rpn_losses = self.proposal_generator(images1, features1, gt1)
        rois1 = self.foreground_rois(self.roi_heads, proposals1, gt1)
        queries, deltas = self.embed_rois(self.roi_heads, features1, rois1)

        t = self.target
        with torch.no_grad(), _quiet_storage():
            features2 = self._target_features(images2)
            # The target's RPN only proposes; in training mode Detectron2's RPN also labels its
            # anchors against the ground truth it is given: give it none (no IoU matrix).
            no_gt = [Instances(g.image_size, gt_boxes=Boxes(g.gt_boxes.tensor[:0])) for g in gt2]
            proposals2, _ = t["proposal_generator"](images2, features2, no_gt)
            rois2 = self.foreground_rois(t["roi_heads"], proposals2, gt2)
            keys, _ = self.embed_rois(t["roi_heads"], features2, rois2)
        return {
            "rpn_losses": rpn_losses, "rois": rois1, "queries": queries, "deltas": deltas,
            "query_ids": cat([r.gt_ids for r in rois1]), "keys": keys,
            "key_ids": cat([r.gt_ids for r in rois2]),
            "num_queries_per_image": float(len(queries)) / len(rois1),
        }

    # ------------------------------------------------------------------ forward

    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: N mapper dicts (``views``: two dicts with ``image``, ``boxes``,
                ``ids``).

        Returns:
            training: the loss dict (class docstring); eval: one dict per image.
        """
        if not self.training:
            return self.embed_pseudo_boxes(batched_inputs)
        out = self.training_outputs(batched_inputs)
        losses = dict(out["rpn_losses"])
        losses["loss_contrast"] = self._contrast(out, "fg_rois")
        if self.regression:
            rois = out["rois"]
            predictor = self.roi_heads.box_predictor
            losses["loss_box_reg"] = self.regression_weight * predictor.box_reg_loss(
                cat([r.proposal_boxes.tensor for r in rois]), cat([r.gt_boxes.tensor for r in rois]),
                out["deltas"], cat([r.gt_classes for r in rois]),
            )
        return losses

    @torch.no_grad()
    def embed_pseudo_boxes(self, batched_inputs: List[dict]) -> List[dict]:
        """Eval mode: the online embeddings and deltas of each image's view-1 pseudo-boxes."""
        images, gt = self._view1_gt(batched_inputs)
        rois = []
        for g in gt:
            r = Instances(g.image_size)
            r.proposal_boxes = g.gt_boxes
            rois.append(r)
        embeddings, deltas = self.embed_rois(self.roi_heads, self.backbone(images.tensor), rois)
        counts = [len(g) for g in gt]
        return [{"embeddings": e, "deltas": d, "ids": g.gt_ids}
                for e, d, g in zip(embeddings.split(counts), deltas.split(counts), gt)]


@META_ARCH_REGISTRY.register()
class AlignDetRetinaNet(_AlignDetMixin, RetinaNet):
    """
    AlignDet pretraining of a RetinaNet: FPN (with P6/P7) and the head's subnets and box
    regressor, the backbone frozen. ``head.cls_score`` becomes a :class:`ConvProjector`.

    Anchors are matched to the pseudo-boxes by Detectron2's anchor matcher
    (MODEL.RETINANET.IOU_THRESHOLDS: positive >= 0.5, negative < 0.4) and ``num_samples``
    per image are sampled, positives first (``subsample_labels`` with positive fraction 1).
    Losses: ``loss_contrast``, InfoNCE of the online view-1 positive anchors against the target
    view-2 positive anchors of the same instance, the sampled background anchors of both views
    as extra negatives; ``loss_box_reg``, L1 on the deltas of the view-1 positive anchors
    (mean over them). No classification loss.

    Eval mode: per image ``{"embeddings": (A_i, D), "ids": (A_i,)}`` of its positive view-1
    anchors through the online network.
    """

    @configurable
    def __init__(self, *, num_samples: int = 2048, embed_dim: int = 256, projector: nn.Module,
                 freeze_backbone: bool = True, momentum: float = 0.996, temperature: float = 0.5,
                 regression: bool = True, contrast_weight: float = 1.0,
                 regression_weight: float = 1.0, **detector):
        """
        Args:
            num_samples: anchors sampled per image, positives first.
            embed_dim: D, channels per anchor of ``projector``'s output.
            projector: replaces ``head.cls_score``; (N, C, H, W) -> (N, A * D, H, W).
            detector: RetinaNet's arguments (backbone, head, anchor_generator, ...).
            Others: as :class:`AlignDetRCNN`.
        """
        super().__init__(**detector)
        self.head.cls_score = projector
        self.num_samples = num_samples
        self.embed_dim = embed_dim
        self._setup_alignment(
            ("backbone", "head"), freeze_backbone=freeze_backbone, momentum=momentum,
            temperature=temperature, regression=regression, contrast_weight=contrast_weight,
            regression_weight=regression_weight,
        )

    @classmethod
    def from_config(cls, cfg):
        ret = RetinaNet.from_config(cfg)
        a = cfg.MODEL.ALIGNDET
        cls_score = ret["head"].cls_score
        num_anchors = ret["anchor_generator"].num_cell_anchors[0]
        hidden = a.DENSE_PROJ_HIDDEN_DIM or cls_score.in_channels
        ret.update(
            _alignment_args(cfg), num_samples=a.DENSE_NUM_SAMPLES, embed_dim=a.EMBED_DIM,
            projector=ConvProjector(cls_score.in_channels, hidden, num_anchors, a.EMBED_DIM),
        )
        return ret

    def dense_outputs(self, backbone_features: Dict[str, torch.Tensor], head) -> tuple:
        """``(anchors (R, 4) Boxes, embeddings (N, R, D), deltas (N, R, 4))`` over all levels."""
        features = [backbone_features[f] for f in self.head_in_features]
        embeddings, deltas = self._transpose_dense_predictions(head(features), [self.embed_dim, 4])
        return Boxes.cat(self.anchor_generator(features)), cat(embeddings, dim=1), cat(deltas, dim=1)

    def sample_anchors(self, anchors: Boxes, gt: Instances):
        """Detectron2's matcher and sampler on one image: ``(positive indices, their matched
        pseudo-box indices, background indices)``, at most ``num_samples`` in all."""
        matched, labels = self.anchor_matcher(pairwise_iou(gt.gt_boxes, anchors))
        pos, neg = subsample_labels(labels, self.num_samples, 1.0, 0)
        return pos, matched[pos], neg

    def _sampled(self, anchors: Boxes, embeddings, gt: List[Instances]):
        """Per-image samples, concatenated: positive embeddings, ids, indices; background
        embeddings."""
        pos_emb, pos_ids, pos_index, bg_emb = [], [], [], []
        for i, g in enumerate(gt):
            pos, matched, neg = self.sample_anchors(anchors, g)
            pos_emb.append(embeddings[i, pos])
            pos_ids.append(g.gt_ids[matched])
            pos_index.append((i, pos, matched))
            bg_emb.append(embeddings[i, neg])
        return cat(pos_emb), cat(pos_ids), pos_index, cat(bg_emb)

    def training_outputs(self, batched_inputs: List[dict]) -> dict:
        """Everything the training forward computes: online view-1 ``queries`` / ``query_ids``
        (positive anchors), their ``deltas``, ``anchors`` and ``targets`` (matched pseudo-box
        XYXY), the target view-2 ``keys`` / ``key_ids``, and ``extra_negatives`` (sampled
        background anchors of both views)."""
        v1, v2, images1, images2, gt1, gt2 = self._views(batched_inputs)
        anchors, emb1, deltas1 = self.dense_outputs(self.backbone(images1.tensor), self.head)
        queries, query_ids, pos_index, bg1 = self._sampled(anchors, emb1, gt1)
        with torch.no_grad():
            anchors2, emb2, _ = self.dense_outputs(self._target_features(images2), self.target["head"])
            keys, key_ids, _, bg2 = self._sampled(anchors2, emb2, gt2)
        return {
            "queries": queries, "query_ids": query_ids, "keys": keys, "key_ids": key_ids,
            "extra_negatives": cat([bg1.detach(), bg2]),
            "anchors": cat([anchors.tensor[pos] for _, pos, _ in pos_index]),
            "targets": cat([g.gt_boxes.tensor[m] for g, (_, _, m) in zip(gt1, pos_index)]),
            "deltas": cat([deltas1[i, pos] for i, pos, _ in pos_index]),
            "num_queries_per_image": float(len(queries)) / len(gt1),
        }

    def forward(self, batched_inputs: List[dict]):
        """Training: ``{"loss_contrast", "loss_box_reg"}`` (class docstring); eval: one dict
        per image."""
        if not self.training:
            return self.embed_positive_anchors(batched_inputs)
        out = self.training_outputs(batched_inputs)
        losses = {"loss_contrast": self._contrast(out, "pos_anchors")}
        if self.regression:
            reg = _dense_box_regression_loss(
                [Boxes(out["anchors"])], self.box2box_transform, [out["deltas"].unsqueeze(0)],
                [out["targets"]], ..., box_reg_loss_type="smooth_l1", smooth_l1_beta=self.smooth_l1_beta,
            )
            losses["loss_box_reg"] = self.regression_weight * reg / max(len(out["deltas"]), 1)
        return losses

    @torch.no_grad()
    def embed_positive_anchors(self, batched_inputs: List[dict]) -> List[dict]:
        """Eval mode: the online embeddings of each image's positive view-1 anchors."""
        images, gt = self._view1_gt(batched_inputs)
        anchors, embeddings, _ = self.dense_outputs(self.backbone(images.tensor), self.head)
        out = []
        for i, g in enumerate(gt):
            matched, labels = self.anchor_matcher(pairwise_iou(g.gt_boxes, anchors))
            pos = torch.nonzero(labels == 1).squeeze(1)
            out.append({"embeddings": embeddings[i, pos], "ids": g.gt_ids[matched[pos]]})
        return out
