"""SoCo model: meta architecture, box branch, projector/predictor, loss and momentum."""
from .loss import byol_loss, symmetric_pair_loss
# Importing meta_arch registers "SoCo" in Detectron2's META_ARCH_REGISTRY.
from .meta_arch import ONLINE_TRUNK_PREFIXES, SoCo
from .mlp import MLPHead, NaiveSyncBatchNorm1d, build_predictor, build_projector, get_norm_1d
from .momentum import ema_update, momentum_at
from .roi_heads import FPNBoxBranch, Res5BoxBranch, build_box_branch

__all__ = [
    "SoCo",
    "ONLINE_TRUNK_PREFIXES",
    "FPNBoxBranch",
    "Res5BoxBranch",
    "build_box_branch",
    "MLPHead",
    "NaiveSyncBatchNorm1d",
    "get_norm_1d",
    "build_projector",
    "build_predictor",
    "byol_loss",
    "symmetric_pair_loss",
    "momentum_at",
    "ema_update",
]
