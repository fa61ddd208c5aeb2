"""MLP heads of BYOL-style methods, e.g. SoCo's projector g and predictor q (Sec. 4 of
SOCO_SPEC.md): Linear - norm - ReLU - Linear, with 1d normalisation layers that follow
Detectron2's norm names."""
from typing import Callable, Optional, Union

import torch
from torch import nn

from detectron2.layers import NaiveSyncBatchNorm

__all__ = ["MLPHead", "NaiveSyncBatchNorm1d", "get_norm_1d"]


class NaiveSyncBatchNorm1d(NaiveSyncBatchNorm):
    """
    Detectron2's :class:`NaiveSyncBatchNorm` (a BatchNorm2d) for (N, C) inputs: the features
    are viewed as (N, C, 1, 1) so the same cross-worker statistics code is used.
    """

    def forward(self, input):
        if input.dim() != 2:
            raise ValueError(f"expected a 2D (N, C) input, got {tuple(input.shape)}")
        return super().forward(input[:, :, None, None])[:, :, 0, 0]


def get_norm_1d(norm: Union[str, Callable, None], channels: int) -> Optional[nn.Module]:
    """
    The 1d counterpart of :func:`detectron2.layers.get_norm` (whose "BN" is a BatchNorm2d).

    Args:
        norm: "BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "" / None (no norm),
            or a callable ``channels -> nn.Module``.
        channels: number of features C of the (N, C) input.
    """
    if norm is None or norm == "":
        return None
    if isinstance(norm, str):
        norm = {
            "BN": nn.BatchNorm1d,
            # nn.SyncBatchNorm accepts (N, C) inputs and falls back to plain BN
            # when torch.distributed is not initialised.
            "SyncBN": nn.SyncBatchNorm,
            "nnSyncBN": nn.SyncBatchNorm,
            "naiveSyncBN": NaiveSyncBatchNorm1d,
            "naiveSyncBN_N": lambda c: NaiveSyncBatchNorm1d(c, stats_mode="N"),
        }[norm]
    return norm(channels)


class MLPHead(nn.Module):
    """
    fc1 -> norm -> ReLU -> fc2, the BYOL projector / predictor.

    Args:
        in_dim: input features (box head output for g, D for q).
        hidden_dim: hidden width (4096 in the paper).
        out_dim: output features D (256 in the paper).
        norm: normalisation after fc1, see :func:`get_norm_1d`.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: str = "BN"):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=not norm)
        self.norm = get_norm_1d(norm, hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, in_dim) -> (M, out_dim)."""
        x = self.fc1(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.fc2(self.relu(x))
