"""Initialisation tricks shared by pretraining methods."""
import torch
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from torch import nn

__all__ = ["zero_init_residual_gamma"]


@torch.no_grad()
def zero_init_residual_gamma(module: nn.Module) -> int:
    """Set the scale (gamma) of the last normalisation of every ResNet residual block inside
    ``module`` to 0, so each block starts as the identity (Goyal et al. 2017; SoCo's and BYOL's
    published runs do this). Returns the number of blocks changed."""
    n = 0
    for block in module.modules():
        if isinstance(block, (BasicBlock, BottleneckBlock)):
            last = block.conv3 if isinstance(block, BottleneckBlock) else block.conv2
            norm = getattr(last, "norm", None)
            if norm is None or getattr(norm, "weight", None) is None:
                continue
            norm.weight.zero_()
            n += 1
    return n
