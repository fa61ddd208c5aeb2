"""Model pieces every pretraining method shares: the momentum target and MLP heads.

A method's meta-architecture lives in its folder (``soco_d2/methods/<method>/meta_arch.py``).
"""
from .mlp import MLPHead, NaiveSyncBatchNorm1d, get_norm_1d
from .momentum import MomentumTarget, ema_update, momentum_at

__all__ = ["MomentumTarget", "momentum_at", "ema_update", "MLPHead", "NaiveSyncBatchNorm1d", "get_norm_1d"]
