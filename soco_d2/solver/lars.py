"""LARS (You et al. 2017) on top of SGD with momentum, as SoCo/BYOL use it (SPEC Sec. 6).

PyTorch, fvcore and Detectron2 ship no LARS, so it lives here. For every parameter p with
gradient g in a group whose ``lars`` flag is True::

    g     <- g + wd * p
    ratio  = eta * ||p|| / ||g||              (1 when either norm is 0; eps guards the division)
    v     <- mu * v + ratio * g
    p     <- p - lr * v

Groups with ``lars=False`` (biases and normalisation parameters) take plain SGD with momentum
and their own weight decay (0 in SoCo).
"""
import torch
from torch.optim.optimizer import Optimizer


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    Args:
        params: parameters or param groups; a group may set ``lars`` (default True) and
            ``weight_decay``.
        lr (float): learning rate.
        momentum (float): SGD momentum mu.
        weight_decay (float): L2 weight decay, added to the gradient before the trust ratio.
        trust_coef (float): eta, the trust coefficient.
        eps (float): added to the gradient norm in the trust ratio's denominator.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coef=0.001, eps=1e-8):
        if lr < 0.0:
            raise ValueError(f"LARS: invalid learning rate {lr}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            trust_coef=trust_coef, eps=eps, lars=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, mu = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd != 0:
                    g = g.add(p, alpha=wd)
                if group["lars"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    ratio = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["trust_coef"] * p_norm / (g_norm + group["eps"]),
                        torch.ones_like(p_norm),
                    )
                    g = g.mul(ratio)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(mu).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss
