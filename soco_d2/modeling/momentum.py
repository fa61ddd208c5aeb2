"""Momentum (exponential moving average) target network, Sec. 6 of SOCO_SPEC.md.

Shared by every method with a BYOL-style target: :class:`MomentumTarget` builds and updates the
target, :func:`momentum_at` is its schedule (applied after each step by
``soco_d2.engine.hooks.MomentumUpdateHook``), :func:`ema_update` the update itself.
"""
import copy
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["MomentumTarget", "momentum_at", "ema_update"]


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


def _without(named, skip: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
    return {n: t for n, t in named if not (skip and n.startswith(skip))}


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float, skip: Tuple[str, ...] = ()) -> None:
    """
    target <- m * target + (1 - m) * online, for every parameter.

    ``target`` must have the same structure as ``online`` (it is a deepcopy of it), except for
    the online submodules whose names start with one of ``skip`` (e.g. ``("bottom_up.",)``):
    the target has no copy of those (see :meth:`MomentumTarget.init_target`'s ``replace``).
    m = 0 copies the online weights, m = 1 leaves the target unchanged.

    Buffers (BatchNorm running statistics, num_batches_tracked) are copied rather than
    averaged, the usual BYOL choice: the target uses batch statistics while training anyway,
    and its running statistics then always equal the online ones.
    """
    t_params = dict(target.named_parameters())
    o_params = _without(online.named_parameters(), skip)
    assert t_params.keys() == o_params.keys(), "target and online networks differ"
    for name, t in t_params.items():
        t.mul_(m).add_(o_params[name].detach(), alpha=1.0 - m)

    t_buffers = dict(target.named_buffers())
    o_buffers = _without(online.named_buffers(), skip)
    assert t_buffers.keys() == o_buffers.keys(), "target and online networks differ"
    for name, t in t_buffers.items():
        t.copy_(o_buffers[name])


class MomentumTarget:
    """Mixin for a model (an ``nn.Module``) with a momentum target network.

    :meth:`init_target`, called in ``__init__`` once the online parts exist, makes ``self.target``
    an ``nn.ModuleDict`` of deep copies of the named online parts, which never receive a
    gradient. It is a submodule, so checkpoints carry it (keys ``target.<part>.*``), and it
    follows the model's train/eval mode. :meth:`update_target` moves it towards the online
    parts; the trainer calls it after every step with :func:`momentum_at` of the iteration,
    starting from :attr:`base_momentum`.
    """

    def init_target(
        self, parts: Sequence[str], base_momentum: float,
        replace: Optional[Dict[nn.Module, nn.Module]] = None,
    ) -> None:
        """Copy the online submodules named ``parts`` into ``self.target`` (frozen).

        Args:
            parts: attribute names of the online parts that have a momentum copy.
            base_momentum: tau_base, the momentum at the first iteration.
            replace: online submodules (inside ``parts``) that the target does not copy, each
                mapped to the module that takes its place in the target, e.g. a frozen
                backbone that both networks share, replaced by a module that passes on the
                features the online backbone computed. They get no momentum update.
        """
        replace = dict(replace or {})
        self.target_parts = tuple(parts)
        self.base_momentum = float(base_momentum)
        self.target = nn.ModuleDict({
            name: copy.deepcopy(getattr(self, name), {id(k): v for k, v in replace.items()})
            for name in self.target_parts
        })
        self.target.requires_grad_(False)
        # Per part, the prefixes of the replaced submodules (skipped by the update).
        self._target_skip = {
            name: tuple(f"{n}." for n, mod in getattr(self, name).named_modules() if mod in replace.keys())
            for name in self.target_parts
        }

    @torch.no_grad()
    def update_target(self, m: float) -> None:
        """target <- m * target + (1 - m) * online (buffers copied); call after each step."""
        skip = getattr(self, "_target_skip", {})
        for name in self.target_parts:
            ema_update(self.target[name], getattr(self, name), m, skip.get(name, ()))
