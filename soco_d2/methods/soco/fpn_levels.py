"""Backbone forward that computes only the FPN levels some box is pooled from.

With scale-aware assignment (Sec. 3) a 224 px view of SoCo-filtered proposals (side >= 0.3 of
the image, so >= 67 px in V1) almost never puts a box on P2, yet P2's 3x3 output conv is the
most expensive layer of the FPN (about 40% of a ResNet-50-FPN forward at 224 px). Detectron2's
FPN.forward always computes every level; this does the same bottom-up and top-down pathway but
runs the output conv of a level only when it is needed. The result is identical for the levels
that are computed.

Distributed training: every rank must run the same layers, or synchronised BatchNorm layers
would wait for each other forever; the needed-level mask is therefore OR-ed across ranks.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import FPN
from detectron2.utils import comm
from torch import distributed as dist


def levels_needed(levels: List[torch.Tensor], num_levels: int, all_levels: bool) -> List[bool]:
    """Which of ``num_levels`` levels any box (on any rank) is assigned to."""
    if all_levels:
        return [True] * num_levels
    device = levels[0].device if levels else torch.device("cpu")
    mask = torch.zeros(num_levels, dtype=torch.int32, device=device)
    if levels:
        lv = torch.cat(list(levels))
        if lv.numel():
            mask[lv.unique()] = 1
    if comm.get_world_size() > 1:
        dist.all_reduce(mask, op=dist.ReduceOp.MAX)
    return [bool(m) for m in mask.tolist()]


def fpn_forward(fpn: FPN, x: torch.Tensor, needed: List[bool]) -> Dict[str, Optional[torch.Tensor]]:
    """FPN.forward restricted to the levels in ``needed`` (one flag per FPN output before the
    top block, finest first). Levels not needed map to None; the top block (P6) is not run.
    Unlike FPN.forward, ``x`` need not be padded to a multiple of the coarsest stride."""
    bottom_up = fpn.bottom_up(x)
    names = fpn._out_features[: len(fpn.in_features)]
    assert len(needed) == len(names), f"need one flag per level {names}, got {len(needed)}"
    results: List[Optional[torch.Tensor]] = [None] * len(names)
    prev = None
    # coarsest to finest, as FPN.forward: lateral_convs[0] is the coarsest level
    for idx, (lateral_conv, output_conv) in enumerate(zip(fpn.lateral_convs, fpn.output_convs)):
        level = len(names) - 1 - idx
        lateral = lateral_conv(bottom_up[fpn.in_features[level]])
        if prev is None:
            prev = lateral
        else:
            # Upsampled to the lateral's size rather than by 2: the same for input sizes that
            # are multiples of the coarsest stride, and it lets a 112 px view through
            # unpadded (res5 4x4 -> res4 7x7), as the published run does.
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            if fpn._fuse_type == "avg":
                prev = prev / 2
        if needed[level]:
            results[level] = output_conv(prev)
        if not any(needed[:level]):
            break  # nothing finer is needed: skip the rest of the top-down pathway
    return dict(zip(names, results))
