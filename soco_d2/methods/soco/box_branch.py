"""
The "box branch" of SoCo: RoIAlign each proposal and run Detectron2's box head on it
(Sec. 3-4 of SOCO_SPEC.md).

Submodule names are those of Detectron2's ROI heads (``box_pooler`` / ``box_head`` as in
StandardROIHeads, ``pooler`` / ``res5`` as in Res5ROIHeads), so that under ``roi_heads.`` the
weights load by name into a stock GeneralizedRCNN.

Shape shorthand: M boxes (all images together), C channels, R pooler resolution.
"""
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.modeling.roi_heads import build_box_head
from detectron2.structures import Boxes

from .config import LEVEL_ASSIGNMENTS

__all__ = ["FPNBoxBranch", "Res5BoxBranch", "build_box_branch"]


def _box_feature_dim(shape: ShapeSpec) -> int:
    return shape.channels * (shape.height or 1) * (shape.width or 1)


class FPNBoxBranch(nn.Module):
    """
    FPN box branch: each box is pooled from the level given to it (computed by the mapper from
    its size in its view), then ``box_head`` (FastRCNNConvFCHead 4conv1fc) maps it to a vector.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        level_assignment: str = "scale_aware",
    ):
        """
        Args:
            in_features: FPN features of levels 0, 1, ... (["p2", "p3", "p4", "p5"]).
            box_pooler: a multi-level ROIPooler over ``in_features``; only its
                ``level_poolers`` are used (the level rule of ROIPooler itself is not).
            box_head: per-box head, e.g. FastRCNNConvFCHead.
            level_assignment: "scale_aware" / "canonical": pool each box from its assigned
                level; "all": pool from every level, see :meth:`forward`.
        """
        super().__init__()
        assert level_assignment in LEVEL_ASSIGNMENTS, level_assignment
        assert len(box_pooler.level_poolers) == len(in_features)
        self.in_features = list(in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.level_assignment = level_assignment
        self.output_dim = _box_feature_dim(box_head.output_shape)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        channels = {input_shape[f].channels for f in in_features}
        assert len(channels) == 1, f"FPN levels differ in channels: {channels}"
        box_pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        box_head = build_box_head(
            cfg, ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)
        )
        return {
            "in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "level_assignment": cfg.MODEL.SOCO.LEVEL_ASSIGNMENT,
        }

    def pool(self, features: List[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor):
        """
        RoIAlign every box from its own level.

        Args:
            features: one (N, C, H_l, W_l) map per level of ``in_features``; None for a
                level that no box is assigned to.
            rois: (M, 5) boxes in pooler format (batch index, x1, y1, x2, y2).
            levels: (M,) int64 level index of each box.

        Returns:
            (M, C, R, R), row i pooled from ``features[levels[i]]``.
        """
        # Levels that no box needs may be None (see fpn_levels.fpn_forward).
        ref = next(f for f in features if f is not None)
        out = ref.new_zeros((rois.shape[0], ref.shape[1], *self.box_pooler.output_size))
        for level, pooler in enumerate(self.box_pooler.level_poolers):
            inds = torch.nonzero(levels == level).squeeze(1)
            if inds.numel() > 0:
                out.index_put_((inds,), pooler(features[level], rois[inds]))
        return out

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        levels: Optional[List[torch.Tensor]],
    ) -> torch.Tensor:
        """
        Args:
            features: backbone outputs, (N, C, H_l, W_l) per name.
            boxes: N Boxes, XYXY in input pixels; image i's boxes live in features[:][i].
            levels: N (B_i,) int64 tensors, level index 0..L-1 of each box (0 = P2).

        Returns:
            (M, output_dim) box features, M = sum B_i, boxes of image 0 first.
        """
        assert levels is not None, "the FPN box branch needs each view's 'levels'"
        x = [features[f] for f in self.in_features]
        rois = convert_boxes_to_pooler_format(boxes)
        levels = torch.cat(list(levels)).to(device=rois.device, dtype=torch.int64)
        assert levels.numel() == rois.shape[0], "one level per box is required"
        num_levels = len(x)
        assert (levels >= 0).all() and (levels < num_levels).all(), "level index out of range"

        if self.level_assignment != "all":
            # "canonical" needs nothing special here: the mapper has already put Detectron2's
            # rule into `levels`.
            return self.box_head(self.pool(x, rois, levels)).flatten(1)

        # "all": the authors' formulation. Every box is pooled from all L levels and the head
        # runs on all L * M crops; each box then keeps the output of its assigned level. This
        # is the same loss as pooling the assigned level only (the authors mask the loss with
        # a box/level correspondence matrix instead) at L times the head cost. In training the
        # head's BatchNorm statistics see all L * M crops, which is the only difference.
        poolers = self.box_pooler.level_poolers
        pooled = torch.cat([pooler(x[lvl], rois) for lvl, pooler in enumerate(poolers)])
        feats = self.box_head(pooled).flatten(1).view(num_levels, rois.shape[0], -1)
        return feats[levels, torch.arange(rois.shape[0], device=feats.device)]


class Res5BoxBranch(nn.Module):
    """
    C4 box branch, Detectron2's Res5ROIHeads layout: RoIAlign on res4 (14x14 in C4 configs),
    the res5 stage as the head, then a spatial mean -> (M, 2048) for ResNet-50.
    """

    @configurable
    def __init__(
        self, *, in_features: List[str], pooler: ROIPooler, res5: nn.Module, output_dim: int
    ):
        """
        Args:
            in_features: the single feature pooled from (["res4"]).
            pooler: single-level ROIPooler on that feature.
            res5: the res5 stage (nn.Sequential of BottleneckBlocks).
            output_dim: channels of res5's output.
        """
        super().__init__()
        assert len(in_features) == 1, "the C4 box branch pools a single feature map"
        self.in_features = list(in_features)
        self.pooler = pooler
        self.res5 = res5
        self.output_dim = output_dim

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        assert len(in_features) == 1, f"Res5ROIHeads needs one input feature, got {in_features}"
        assert not cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE[-1], "deformable res5 is not supported"
        pooler = ROIPooler(
            output_size=cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
            scales=(1.0 / input_shape[in_features[0]].stride,),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        # Same stage, same config keys as Res5ROIHeads._build_res5_block, so the keys
        # roi_heads.res5.* and their shapes are those of a stock C4 Mask R-CNN.
        r = cfg.MODEL.RESNETS
        factor = 2**3  # res5 is 8x res2
        out_channels = r.RES2_OUT_CHANNELS * factor
        blocks = ResNet.make_stage(
            BottleneckBlock,
            3,
            stride_per_block=[2, 1, 1],
            in_channels=out_channels // 2,
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * factor,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
        return {
            "in_features": in_features,
            "pooler": pooler,
            "res5": nn.Sequential(*blocks),
            "output_dim": out_channels,
        }

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        levels: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """
        Same contract as :meth:`FPNBoxBranch.forward`; ``levels`` is ignored (one level).

        Returns:
            (M, output_dim) box features.
        """
        x = self.pooler([features[f] for f in self.in_features], boxes)
        return self.res5(x).mean(dim=(2, 3))


def build_box_branch(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """
    The box branch matching the detector the weights are meant for, by MODEL.ROI_HEADS.NAME:
    "Res5ROIHeads" -> :class:`Res5BoxBranch` (C4), "StandardROIHeads" -> :class:`FPNBoxBranch`.
    """
    name = cfg.MODEL.ROI_HEADS.NAME
    if name == "Res5ROIHeads":
        return Res5BoxBranch(cfg, input_shape)
    if name == "StandardROIHeads":
        return FPNBoxBranch(cfg, input_shape)
    raise ValueError(
        f"MODEL.ROI_HEADS.NAME={name!r}: SoCo supports 'StandardROIHeads' (FPN, box head) "
        "and 'Res5ROIHeads' (C4, res5 head)"
    )
