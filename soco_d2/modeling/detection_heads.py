"""Detector heads the transfer configs use that Detectron2 does not ship."""
from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

__all__ = ["Res5ROIHeadsExtraNorm"]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads with one more normalisation layer (``MODEL.RESNETS.NORM``) on the output of
    res5, as in the published C4 transfer of SoCo (and MoCo). Its weights are
    ``roi_heads.res5.norm.*``; the pretrained ``roi_heads.res5.{0,1,2}.*`` load by name."""

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels
