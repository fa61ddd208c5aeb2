"""SoCo's object-level BYOL loss (Sec. 5 of SOCO_SPEC.md).

Shape shorthand:
    M  objects (matched box rows, all images of the batch together)
    D  embedding dimension (MODEL.SOCO.PROJECTOR_DIM)
"""
import torch
import torch.nn.functional as F

__all__ = ["byol_loss", "symmetric_pair_loss"]


def byol_loss(online_pred: torch.Tensor, target_proj: torch.Tensor) -> torch.Tensor:
    """
    Per-object regression loss 2 - 2 * cos(v, z) = ||v/|v| - z/|z|||^2.

    Args:
        online_pred: (M, D) predictor outputs q(g(.)) of the online network.
        target_proj: (M, D) projector outputs g'(.) of the target network, row i describing
            the same object as row i of ``online_pred`` seen in another view. No gradient flows
            into it.

    Returns:
        (M,) loss per object, in [0, 4]: 0 for parallel embeddings, 4 for opposite ones.
        Invariant to the scale of either input.
    """
    # float32 so that the normalisation is safe under mixed precision.
    v = F.normalize(online_pred.float(), dim=1)
    z = F.normalize(target_proj.detach().float(), dim=1)
    return 2.0 - 2.0 * (v * z).sum(dim=1)


def symmetric_pair_loss(
    pred_a: torch.Tensor, pred_b: torch.Tensor, proj_a: torch.Tensor, proj_b: torch.Tensor
) -> torch.Tensor:
    """
    The loss of one view pair (a, b), symmetrised: l(a -> b) + l(b -> a).

    Args:
        pred_a, pred_b: (M, D) online predictions of the M matched objects in views a and b.
        proj_a, proj_b: (M, D) target projections of the same objects, same row order.

    Returns:
        Scalar: mean over objects of byol(pred_a, proj_b) + mean of byol(pred_b, proj_a).
    """
    return byol_loss(pred_a, proj_b).mean() + byol_loss(pred_b, proj_a).mean()
