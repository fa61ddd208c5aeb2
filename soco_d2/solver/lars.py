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
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # Multi-tensor (foreach) kernels: one call per group instead of one per tensor.
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["lars"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                ratio = torch.where(
                    (p_norm > 0) & (g_norm > 0),
                    group["trust_coef"] * p_norm / (g_norm + group["eps"]),
                    torch.ones_like(p_norm),
                )
                grads = torch._foreach_mul(grads, list(ratio.unbind()))
            bufs = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    # v_0 = 0, so after the first step v = g
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss
