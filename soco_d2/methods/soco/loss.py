"""SoCo's object-level BYOL loss (Sec. 5 of SOCO_SPEC.md).

Shape shorthand:
    M  objects (matched box rows, all images of the batch together)
    D  embedding dimension (MODEL.SOCO.PROJECTOR_DIM)
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["byol_loss", "symmetric_pair_loss", "info_nce_loss", "symmetric_info_nce_loss",
           "pair_cosine", "feature_spread_terms"]


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


def info_nce_loss(online_pred: torch.Tensor, target_proj: torch.Tensor, temperature: float,
                  image_index: Optional[torch.Tensor] = None,
                  extra_negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Per-object InfoNCE with the other objects of the batch as negatives (MoCo v3's form, an
    ablation of SoCo's negative-free loss: ``MODEL.SOCO.LOSS "infonce"``):

        l_i = -2t * log( exp(v_i.z_i / t) / sum_j exp(v_i.z_j / t) ),   v, z L2-normalised,

    j over the M target projections of the pair's other view. The factor 2t gives the positive
    cosine the same gradient as BYOL's 2 - 2 cos when the positive dominates the softmax.

    With ``image_index``, the other objects of the object's own image are left out of the sum
    (j over the other images' objects and i itself): SoCo's K proposals of one image overlap,
    and pushing them apart asks the features for where in the image a box lies.

    ``extra_negatives`` (e.g. the target embeddings of past iterations, MoCo's queue) join every
    object's denominator: j then also runs over them.

    Args:
        online_pred: (M, D) online predictions; row i and row i of ``target_proj`` are one object.
        target_proj: (M, D) target projections (no gradient flows into them).
        temperature: t > 0.
        image_index: optional (M,) the image of each object.
        extra_negatives: optional (Q, D) embeddings that are negatives of every object.

    Returns:
        (M,) loss per object, >= 0.
    """
    v = F.normalize(online_pred.float(), dim=1)
    z = F.normalize(target_proj.detach().float(), dim=1)
    logits = v @ z.t() / temperature  # (M, M): row i, column j = object i against object j
    labels = torch.arange(v.shape[0], device=v.device)
    if image_index is not None:
        same_image = image_index[:, None] == image_index[None, :]
        same_image.fill_diagonal_(False)  # the positive stays
        logits = logits.masked_fill(same_image, float("-inf"))
    if extra_negatives is not None and len(extra_negatives):
        q = F.normalize(extra_negatives.detach().float(), dim=1)
        logits = torch.cat([logits, v @ q.t() / temperature], dim=1)  # (M, M + Q)
    return 2.0 * temperature * F.cross_entropy(logits, labels, reduction="none")


def symmetric_info_nce_loss(
    pred_a: torch.Tensor, pred_b: torch.Tensor, proj_a: torch.Tensor, proj_b: torch.Tensor,
    temperature: float, image_index: Optional[torch.Tensor] = None,
    extra_negatives: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``symmetric_pair_loss`` with ``info_nce_loss`` per direction: scalar."""
    return (info_nce_loss(pred_a, proj_b, temperature, image_index, extra_negatives).mean()
            + info_nce_loss(pred_b, proj_a, temperature, image_index, extra_negatives).mean())


@torch.no_grad()
def pair_cosine(
    pred_a: torch.Tensor, pred_b: torch.Tensor, proj_a: torch.Tensor, proj_b: torch.Tensor
) -> torch.Tensor:
    """Mean cosine of the matched (prediction, other view's projection) pairs, both directions:
    the ``soco/cos_vA_vB`` monitor, whatever the loss."""
    cos_ab = F.cosine_similarity(pred_a.float(), proj_b.float(), dim=1)
    cos_ba = F.cosine_similarity(pred_b.float(), proj_a.float(), dim=1)
    return 0.5 * (cos_ab.mean() + cos_ba.mean())


def feature_spread_terms(features: torch.Tensor, eps: float = 1e-4):
    """
    Two collapse guards on the (M, C) box features themselves (the layer that transfers to the
    detector), in the spirit of VICReg's variance and covariance terms but scale-free, because
    the box head's fc output has no fixed scale:

        s_d    = std over the M objects of unit d,  s_bar = mean_d s_d (no gradient)
        spread = mean_d relu(1 - s_d / s_bar)              (a unit far below the average
                                                            spread is pushed back; a dead unit,
                                                            s_d = 0, costs 1)
        decorr = 1/C * sum_{d != e} rho_de^2               (rho: the units' correlation matrix
                                                            over the M objects)

    ``spread`` keeps ReLU units from dying (a unit already constant has no gradient, as behind a
    dead ReLU: it prevents, it cannot revive); ``decorr`` spreads the variance over more directions
    (the effective rank). With M < C, ``decorr`` cannot reach 0 (the M x C correlation matrix
    has rank <= M): it is a pressure towards an even spectrum, not a target.

    Args:
        features: (M, C), M >= 2.
        eps: added to the variances, so that dead units give finite gradients.

    Returns:
        (spread, decorr): two scalars >= 0, computed in float32.
    """
    x = features.float()
    if x.shape[0] < 2:
        raise ValueError(f"feature_spread_terms needs >= 2 objects, got {x.shape[0]}")
    x = x - x.mean(dim=0)
    std = torch.sqrt(x.var(dim=0) + eps)
    spread = F.relu(1.0 - std / std.mean().detach()).mean()
    xn = x / std
    corr = xn.t() @ xn / (x.shape[0] - 1)  # (C, C), diagonal ~1
    off = corr - torch.diag_embed(torch.diagonal(corr))
    decorr = off.pow(2).sum() / x.shape[1]
    return spread, decorr
