"""Montage's loss (spec: ERF-adaptive dense classification): soft-label cross-entropy at every
location, averaged within each region, then over the regions, so each region counts equally
whatever its size; then over the montages of the batch.

Shape shorthand: N montages, C logits, h x w feature map, R regions (4).
"""
import torch
import torch.nn.functional as F

__all__ = ["region_averaged_soft_ce"]


def region_averaged_soft_ce(logits: torch.Tensor, targets: torch.Tensor, own: torch.Tensor,
                            num_regions: int) -> torch.Tensor:
    """
    Args:
        logits: (N, C, h, w) classifier outputs.
        targets: (N, h, w, C) soft labels (each sums to 1).
        own: int64 (N, h, w) the region that holds each location.
        num_regions: R.

    Returns:
        scalar: mean over montages of the mean over regions (that hold at least one location)
        of the mean over their locations of ``-sum_c targets_c log softmax(logits)_c``.
    """
    log_p = F.log_softmax(logits.float(), dim=1).permute(0, 2, 3, 1)  # (N, h, w, C)
    ce = -(targets.to(log_p.dtype) * log_p).sum(dim=-1)  # (N, h, w)
    member = F.one_hot(own, num_regions).to(ce.dtype)  # (N, h, w, R)
    count = member.sum(dim=(1, 2))  # (N, R)
    per_region = (ce[..., None] * member).sum(dim=(1, 2)) / count.clamp(min=1)
    present = (count > 0).to(ce.dtype)
    per_montage = (per_region * present).sum(dim=1) / present.sum(dim=1)
    return per_montage.mean()
