"""Model pieces every pretraining method shares: the momentum target, MLP heads, init tricks, a
queue of past embeddings (extra negatives), k-means and cluster matching (pseudo-classes).

A method's meta-architecture lives in its folder (``soco_d2/methods/<method>/meta_arch.py``).
"""
from . import detection_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm in ROI_HEADS_REGISTRY)
from .init import zero_init_residual_gamma
from .kmeans import kmeans, match_clusters
from .mlp import MLPHead, NaiveSyncBatchNorm1d, get_norm_1d
from .momentum import MomentumTarget, ema_update, momentum_at
from .queue import EmbeddingQueue

__all__ = ["MomentumTarget", "momentum_at", "ema_update", "EmbeddingQueue", "MLPHead", "NaiveSyncBatchNorm1d", "get_norm_1d",
           "zero_init_residual_gamma", "kmeans", "match_clusters"]
