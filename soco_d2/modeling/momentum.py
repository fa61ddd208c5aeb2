"""Momentum (exponential moving average) target network, Sec. 6 of SOCO_SPEC.md."""
import math

import torch
from torch import nn

__all__ = ["momentum_at", "ema_update"]


def momentum_at(iteration: int, max_iter: int, base: float) -> float:
    """
    tau_k = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2.

    Starts at ``base`` for k = 0 and rises monotonically to 1 at k = K; k is clamped to [0, K].
    With K <= 0 (no schedule) it returns ``base``.
    """
    if max_iter <= 0:
        return float(base)
    k = min(max(iteration, 0), max_iter)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / max_iter) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """
    target <- m * target + (1 - m) * online, for every parameter.

    ``target`` must have the same structure as ``online`` (it is a deepcopy of it). m = 0
    copies the online weights, m = 1 leaves the target unchanged.

    Buffers (BatchNorm running statistics, num_batches_tracked) are copied rather than
    averaged, the usual BYOL choice: the target uses batch statistics while training anyway,
    and its running statistics then always equal the online ones.
    """
    t_params = dict(target.named_parameters())
    o_params = dict(online.named_parameters())
    assert t_params.keys() == o_params.keys(), "target and online networks differ"
    for name, t in t_params.items():
        t.mul_(m).add_(o_params[name].detach(), alpha=1.0 - m)

    t_buffers = dict(target.named_buffers())
    o_buffers = dict(online.named_buffers())
    assert t_buffers.keys() == o_buffers.keys(), "target and online networks differ"
    for name, t in t_buffers.items():
        t.copy_(o_buffers[name])
