"""
SoCo meta architecture: online and momentum-target detector trunks regressing each other's
object embeddings across views (Sec. 3-5 of SOCO_SPEC.md).

Shape shorthand:
    N    images in the batch
    V    views per image (3; 4 for SoCo*)
    B_v  boxes of one image in view v (chosen by the mapper)
    K    matched proposals per image and view pair
    C    box feature dimension (FC_DIM of the box head; 2048 for the C4 res5 head)
    D    embedding dimension (MODEL.SOCO.PROJECTOR_DIM)
"""
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.structures import Boxes, ImageList

from ...evaluation.probe import BoxFeatureTrunk
from ...modeling import EmbeddingQueue, MLPHead, MomentumTarget
from ...modeling.init import zero_init_residual_gamma
from .box_branch import build_box_branch
from .config import LOSSES
from .fpn_levels import fpn_forward, levels_needed
from .loss import feature_spread_terms, pair_cosine, symmetric_info_nce_loss, symmetric_pair_loss

__all__ = ["SoCo", "ONLINE_TRUNK_PREFIXES", "build_projector", "build_predictor"]

# state_dict prefixes of the online detector trunk, i.e. what transfers by name to a stock
# GeneralizedRCNN (FPN: backbone + box head; C4: backbone + res5). Projector, predictor and
# target.* are pretraining-only.
ONLINE_TRUNK_PREFIXES = ("backbone.", "roi_heads.box_head.", "roi_heads.res5.")

# Online parts that have a momentum copy under `target.` (the predictor has none).
_TARGET_PARTS = ("backbone", "roi_heads", "projector")


def build_projector(cfg, in_dim: int) -> MLPHead:
    """Projector g: box feature (in_dim) -> D."""
    soco = cfg.MODEL.SOCO
    return MLPHead(in_dim, soco.PROJECTOR_HIDDEN_DIM, soco.PROJECTOR_DIM, soco.HEAD_NORM)


def build_predictor(cfg) -> MLPHead:
    """Predictor q (online only): D -> D."""
    soco = cfg.MODEL.SOCO
    return MLPHead(soco.PROJECTOR_DIM, soco.PREDICTOR_HIDDEN_DIM, soco.PROJECTOR_DIM, soco.HEAD_NORM)


@META_ARCH_REGISTRY.register()
class SoCo(MomentumTarget, nn.Module):
    """
    SoCo pretraining model.

    Online network: ``backbone`` (ResNet-FPN or ResNet-C4) -> ``roi_heads`` (RoIAlign + box head
    or res5) -> ``projector`` g -> ``predictor`` q. Target network ``target.{backbone, roi_heads,
    projector}``: a copy of the online parts updated only by :meth:`update_target`
    (:class:`soco_d2.modeling.MomentumTarget`).

    Module names equal Detectron2's, so ``backbone.*`` and ``roi_heads.box_head.*`` /
    ``roi_heads.res5.*`` load into a stock GeneralizedRCNN without renaming.

    Input: a list of N dicts from the SoCo dataset mapper (format in soco_d2/methods/soco/mapper.py): ``views``
    (each with uint8 ``image`` (3, S_v, S_v), ``boxes`` (B_v,), ``levels`` (B_v,)) and ``pairs``
    ((a, b, idx_a (K,), idx_b (K,)), ...).

    Output in training: {"loss_soco": scalar}, the sum over view pairs (a, b) of
    mean byol(q(g(online_a)), g'(target_b)) + mean byol(q(g(online_b)), g'(target_a)); with
    the collapse guards on, also ``loss_spread`` / ``loss_decorr`` (weight x the sum over view
    groups of loss.feature_spread_terms of the online box features).

    Output in eval mode: one dict per image, ``{"views": [dict per view]}`` where each view
    has the online ``box_features`` (B_v, C), ``projections`` (B_v, D) and ``predictions``
    (B_v, D) of that image's boxes. The target is not run. Useful for debugging and probing.

    BatchNorm: the target follows the model's train/eval mode, so while training it
    normalises with batch statistics like the online network (BYOL); its running statistics
    are overwritten from the online ones at each :meth:`update_target`.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        roi_heads: nn.Module,
        projector: nn.Module,
        predictor: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channels_last: bool = False,
        momentum: float = 0.99,
        zero_init_residual: bool = False,
        loss: str = "byol",
        temperature: float = 0.2,
        same_image_negatives: bool = True,
        queue: Optional[EmbeddingQueue] = None,
        spread_weight: float = 0.0,
        decorr_weight: float = 0.0,
    ):
        """
        Args:
            backbone: online backbone (a Detectron2 Backbone).
            roi_heads: online box branch, ``forward(features, boxes, levels) -> (M, C)``.
            projector: g, (M, C) -> (M, D).
            predictor: q, (M, D) -> (M, D); online only.
            pixel_mean, pixel_std: per-channel normalisation, in the channel order of the
                images (cfg.INPUT.FORMAT).
            channels_last: keep conv weights and images in NHWC memory format (same values,
                faster convolutions with oneDNN on CPU and with tensor cores on GPU).
            momentum: tau_base of the target's momentum schedule (the trainer applies it).
            zero_init_residual: start the last BatchNorm scale of every residual block of the
                online backbone at 0 (before the target copy), as the published run does.
            loss: "byol" (published) or "infonce" (the batch's other objects as negatives,
                loss.info_nce_loss).
            temperature: InfoNCE's temperature (unused by "byol").
            same_image_negatives: with "infonce", whether the other objects of an object's own
                image are negatives too (False: only other images' objects are).
            queue: with "infonce", an :class:`soco_d2.modeling.EmbeddingQueue` of D-dimensional
                embeddings: the target projections of the last iterations' objects (V1) are
                kept there as extra negatives (MoCo's queue); None: in-batch negatives only.
            spread_weight, decorr_weight: weights of the collapse guards on the online box
                features (loss.feature_spread_terms), 0: off (published). When on, the training
                output also has ``loss_spread`` / ``loss_decorr``.
        """
        super().__init__()
        if zero_init_residual:
            zero_init_residual_gamma(backbone)
        self.backbone = backbone
        self.roi_heads = roi_heads
        self.projector = projector
        self.predictor = predictor
        # Momentum target: a copy of the online parts at init, no gradients ever. It is a
        # submodule so that checkpoints carry it (keys target.backbone.*, ...), and it follows
        # the model's train/eval mode: in training its BN layers use batch statistics (BYOL).
        self.init_target(_TARGET_PARTS, momentum)

        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        assert self.pixel_mean.shape == self.pixel_std.shape, "PIXEL_MEAN / PIXEL_STD lengths differ"
        self.channels_last = channels_last
        assert loss in LOSSES, f"unknown SoCo loss {loss!r}"
        self.loss_type = loss
        self.temperature = temperature
        self.same_image_negatives = same_image_negatives
        assert queue is None or loss == "infonce", "a negative queue needs the infonce loss"
        self.queue = queue
        self.spread_weight = spread_weight
        self.decorr_weight = decorr_weight
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        roi_heads = build_box_branch(cfg, backbone.output_shape())
        return {
            "backbone": backbone,
            "roi_heads": roi_heads,
            "projector": build_projector(cfg, roi_heads.output_dim),
            "predictor": build_predictor(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "channels_last": cfg.MODEL.SOCO.CHANNELS_LAST,
            "momentum": cfg.MODEL.SOCO.MOMENTUM,
            "zero_init_residual": cfg.MODEL.SOCO.ZERO_INIT_RESIDUAL,
            "loss": cfg.MODEL.SOCO.LOSS,
            "temperature": cfg.MODEL.SOCO.TEMPERATURE,
            "same_image_negatives": cfg.MODEL.SOCO.SAME_IMAGE_NEGATIVES,
            "queue": (EmbeddingQueue(cfg.MODEL.SOCO.QUEUE_SIZE, cfg.MODEL.SOCO.PROJECTOR_DIM)
                      if cfg.MODEL.SOCO.QUEUE_SIZE > 0 else None),
            "spread_weight": cfg.MODEL.SOCO.SPREAD_WEIGHT,
            "decorr_weight": cfg.MODEL.SOCO.DECORR_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def online_state_dict_prefixes(self) -> Tuple[str, ...]:
        """The state_dict prefixes of this model's online trunk, for the exporter."""
        keys = self.state_dict().keys()
        return tuple(p for p in ONLINE_TRUNK_PREFIXES if any(k.startswith(p) for k in keys))

    # ------------------------------------------------------------------ forward

    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: N mapper dicts, see the class docstring.

        Returns:
            training: {"loss_soco": scalar tensor}; eval: list of N dicts, see class docstring.
        """
        num_images = len(batched_inputs)
        num_views = len(batched_inputs[0]["views"])
        assert all(len(x["views"]) == num_views for x in batched_inputs), "images differ in views"
        # counts[v][i]: boxes of image i in view v
        counts = [[len(x["views"][v]["boxes"]) for x in batched_inputs] for v in range(num_views)]

        online: List[Dict[str, torch.Tensor]] = [None] * num_views
        keepalive = 0.0
        spread = decorr = 0.0
        target_proj: List[torch.Tensor] = [None] * num_views
        # Views of the same size go through each network as one batch (e.g. V1 + V2 at 224,
        # then V3 at 112): fewer, larger calls, and all networks see the same BN batches.
        for views in self._views_by_size(batched_inputs):
            images, boxes, levels = self._prepare(batched_inputs, views)
            split = [sum(counts[v]) for v in views]

            feats, zero = self._box_features(self.backbone, self.roi_heads, images, boxes, levels)
            keepalive = keepalive + zero
            if self.training and (self.spread_weight > 0 or self.decorr_weight > 0):
                s_term, d_term = feature_spread_terms(feats)
                spread, decorr = spread + s_term, decorr + d_term
            proj = self.projector(feats)
            pred = self.predictor(proj)
            for v, f, z, p in zip(views, feats.split(split), proj.split(split), pred.split(split)):
                online[v] = {"box_features": f, "projections": z, "predictions": p}

            if self.training:
                with torch.no_grad():
                    t = self.target
                    t_feats, _ = self._box_features(
                        t["backbone"], t["roi_heads"], images, boxes, levels
                    )
                    for v, z in zip(views, t["projector"](t_feats).split(split)):
                        target_proj[v] = z

        if not self.training:
            per_image = [{"views": [{} for _ in range(num_views)]} for _ in range(num_images)]
            for v in range(num_views):
                for key, value in online[v].items():
                    for i, chunk in enumerate(value.split(counts[v])):
                        per_image[i]["views"][v][key] = chunk
            return per_image

        assert len(batched_inputs[0]["pairs"]) > 0, "no view pairs to compute the loss on"
        loss = keepalive
        monitors = {}
        for a, b, rows_a, rows_b, owner in self._matched_rows(batched_inputs, counts):
            rows_a, rows_b = rows_a.to(self.device), rows_b.to(self.device)
            matched = (
                online[a]["predictions"][rows_a],
                online[b]["predictions"][rows_b],
                target_proj[a][rows_a],
                target_proj[b][rows_b],
            )
            if self.loss_type == "infonce":
                loss = loss + symmetric_info_nce_loss(
                    *matched, self.temperature,
                    None if self.same_image_negatives else owner.to(self.device),
                    None if self.queue is None else self.queue.negatives())
            else:
                loss = loss + symmetric_pair_loss(*matched)
            monitors[f"soco/cos_v{a + 1}_v{b + 1}"] = pair_cosine(*matched)
        # Collapse monitor (BYOL): per-dimension std over all objects of the L2-normalised
        # target projections; about 1/sqrt(D) when healthy, towards 0 when they collapse.
        z = F.normalize(torch.cat(target_proj).detach().float(), dim=1)
        monitors["soco/target_std"] = z.std(dim=0).mean()
        monitors["soco/target_std_x_sqrt_d"] = monitors["soco/target_std"] * z.shape[1] ** 0.5
        if self.queue is not None:
            monitors["soco/queue_filled"] = self.queue.count.float() / self.queue.size
            # After the loss: this batch's objects are negatives of the next batches only. V1
            # (the whole image) holds every proposal of the image.
            self.queue.enqueue(target_proj[0])
        self._monitors = monitors
        losses = {"loss_soco": loss}
        if self.spread_weight > 0:
            losses["loss_spread"] = self.spread_weight * spread
        if self.decorr_weight > 0:
            losses["loss_decorr"] = self.decorr_weight * decorr
        return losses

    def monitors(self) -> Dict[str, torch.Tensor]:
        """The learning monitors of the last training forward (engine/monitors.py logs them):
        ``soco/cos_vA_vB``, mean cosine between online predictions and target projections of
        the matched objects of views A and B (1 - loss / 4 of that pair), and
        ``soco/target_std`` (and times sqrt(D)), the collapse monitor."""
        return dict(getattr(self, "_monitors", {}))

    def probe_trunk(self) -> BoxFeatureTrunk:
        """The online trunk as the detector will use it, for the probe (engine/monitors.py):
        backbone, the box branch's pooler with Detectron2's own level rule, box head (FPN) or
        res5 (C4). Not a copy."""
        mean, std = self.pixel_mean.flatten().tolist(), self.pixel_std.flatten().tolist()
        rh = self.roi_heads
        if hasattr(rh, "box_head"):
            return BoxFeatureTrunk(self.backbone, rh.in_features, rh.box_pooler, rh.box_head, mean, std)
        return BoxFeatureTrunk(self.backbone, rh.in_features, rh.pooler, rh.res5, mean, std, head_pool=True)

    @staticmethod
    def _views_by_size(batched_inputs: List[dict]) -> List[List[int]]:
        """View indices grouped by image size (of the first image), in order of first use."""
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for v, view in enumerate(batched_inputs[0]["views"]):
            groups.setdefault(tuple(view["image"].shape[-2:]), []).append(v)
        return list(groups.values())

    def _prepare(self, batched_inputs: List[dict], views: List[int]):
        """
        Normalised images, boxes and levels of ``views`` for all images, view-major:
        entry j * N + i is image i in view views[j].
        """
        images, boxes, levels = [], [], []
        for v in views:
            for x in batched_inputs:
                view = x["views"][v]
                image = view["image"].to(self.device).float()
                images.append((image - self.pixel_mean) / self.pixel_std)
                b = view["boxes"]
                b = b.tensor if isinstance(b, Boxes) else torch.as_tensor(b)
                boxes.append(Boxes(b.to(self.device)))
                lv = view.get("levels")
                levels.append(None if lv is None else lv.to(self.device))
        if any(lv is None for lv in levels):
            levels = None
        # No padding on the FPN path (fpn_levels.fpn_forward upsamples to the lateral's size):
        # a 112 px view goes through as 112 px, as in the published run. Other backbones pad
        # (bottom/right, after normalisation; boxes unaffected) to their size divisibility.
        unpadded = isinstance(self.backbone, FPN) and levels is not None
        images = ImageList.from_tensors(
            images,
            0 if unpadded else self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images, boxes, levels

    @staticmethod
    def _box_features(backbone, roi_heads, images: ImageList, boxes, levels):
        """
        (M, C) box features of one network for a batch of images, and a zero scalar that
        touches every FPN level computed. Only levels some box is pooled from are computed
        (fpn_levels.py); adding the zero to the loss makes a level computed for another rank's
        boxes run its backward here too, so synchronised BatchNorm stays in step across ranks.
        """
        if isinstance(backbone, FPN) and levels is not None:
            needed = levels_needed(
                levels, len(roi_heads.in_features), roi_heads.level_assignment == "all"
            )
            features = fpn_forward(backbone, images.tensor, needed)
        else:
            features = backbone(images.tensor)
        zero = sum(f.sum() * 0.0 for f in features.values() if f is not None)
        return roi_heads(features, boxes, levels), zero

    @staticmethod
    def _matched_rows(batched_inputs: List[dict], counts: List[List[int]]):
        """
        For every view pair (a, b): the rows of the N * K matched objects in view a's and view
        b's (sum_i B_v,i, ...) outputs, image by image, same order in both, and the image of
        each of those objects.
        """
        num_pairs = len(batched_inputs[0]["pairs"])
        assert all(len(x["pairs"]) == num_pairs for x in batched_inputs), "images differ in pairs"
        # offsets[v][i]: first row of image i in view v's outputs
        offsets = [list(itertools.accumulate(c[:-1], initial=0)) for c in counts]

        for p in range(num_pairs):
            a, b = batched_inputs[0]["pairs"][p][:2]
            rows_a, rows_b, owner = [], [], []
            for i, x in enumerate(batched_inputs):
                pa, pb, idx_a, idx_b = x["pairs"][p]
                assert (pa, pb) == (a, b), "pair order differs between images"
                assert len(idx_a) == len(idx_b), "unequal matches in a pair"
                rows_a.append(torch.as_tensor(idx_a, dtype=torch.int64) + offsets[a][i])
                rows_b.append(torch.as_tensor(idx_b, dtype=torch.int64) + offsets[b][i])
                owner.append(torch.full((len(idx_a),), i, dtype=torch.int64))
            yield a, b, torch.cat(rows_a), torch.cat(rows_b), torch.cat(owner)
