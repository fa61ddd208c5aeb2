"""Optimizer for SoCo pretraining: LARS (or SGD) with biases and norm parameters excluded."""
import logging
import math

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.layers.batch_norm import NaiveSyncBatchNorm

from .lars import LARS

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    NaiveSyncBatchNorm,
    FrozenBatchNorm2d,
)


def split_decay_params(model: torch.nn.Module):
    """Trainable parameters split into (adapted, excluded): biases and norm weights excluded.

    Frozen parameters (the momentum target) are in neither list.
    """
    adapted, excluded, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (excluded if is_norm or name == "bias" else adapted).append(p)
    return adapted, excluded


def effective_lr(cfg) -> float:
    """BASE_LR scaled by total batch: BASE_LR * IMS_PER_BATCH / BASE_LR_BATCH (Sec. 6)."""
    if cfg.SOLVER.BASE_LR_BATCH > 0:
        return cfg.SOLVER.BASE_LR * cfg.SOLVER.IMS_PER_BATCH / cfg.SOLVER.BASE_LR_BATCH
    return cfg.SOLVER.BASE_LR


def build_soco_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """LARS or SGD per ``SOLVER.OPTIMIZER``; weight decay ``SOLVER.WEIGHT_DECAY`` on weights only.

    Raises:
        ValueError: unknown ``SOLVER.OPTIMIZER``.
    """
    adapted, excluded = split_decay_params(model)
    lr = effective_lr(cfg)
    wd = cfg.SOLVER.WEIGHT_DECAY
    name = cfg.SOLVER.OPTIMIZER.upper()
    logger.info(
        f"{name}: lr {lr:g} (BASE_LR {cfg.SOLVER.BASE_LR:g} x batch "
        f"{cfg.SOLVER.IMS_PER_BATCH} / {cfg.SOLVER.BASE_LR_BATCH or 'as is'}), "
        f"{len(adapted)} adapted tensors, {len(excluded)} bias/norm tensors excluded "
        f"(lr x {cfg.SOLVER.BIAS_NORM_LR_FACTOR:g})"
    )
    excluded_lr = lr * cfg.SOLVER.BIAS_NORM_LR_FACTOR
    if name == "LARS":
        groups = [
            {"params": adapted, "weight_decay": wd, "lars": True},
            {"params": excluded, "weight_decay": 0.0, "lars": False, "lr": excluded_lr},
        ]
        return LARS(
            groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM,
            trust_coef=cfg.SOLVER.LARS_TRUST_COEF, eps=cfg.SOLVER.LARS_EPS,
        )
    if name == "SGD":
        groups = [
            {"params": adapted, "weight_decay": wd},
            {"params": excluded, "weight_decay": 0.0, "lr": excluded_lr},
        ]
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
        )
    raise ValueError(f"SOLVER.OPTIMIZER must be 'LARS' or 'SGD', got '{cfg.SOLVER.OPTIMIZER}'")


def resolve_epochs(cfg, dataset_size_fn) -> None:
    """Derive MAX_ITER, WARMUP_ITERS and STEPS from SOLVER.EPOCHS, WARMUP_EPOCHS (unless it is
    negative) and STEP_EPOCHS (when set) (cfg not frozen).

    Args:
        dataset_size_fn: name -> number of images, applied to each of DATASETS.TRAIN.
    """
    if cfg.SOLVER.EPOCHS <= 0:
        return
    n = sum(dataset_size_fn(name) for name in cfg.DATASETS.TRAIN)
    batch = cfg.SOLVER.IMS_PER_BATCH
    cfg.SOLVER.MAX_ITER = max(1, math.ceil(cfg.SOLVER.EPOCHS * n / batch))
    warmup = cfg.SOLVER.WARMUP_ITERS
    if cfg.SOLVER.WARMUP_EPOCHS >= 0:
        warmup = math.ceil(cfg.SOLVER.WARMUP_EPOCHS * n / batch)
    if warmup >= cfg.SOLVER.MAX_ITER:
        logger.warning(
            f"The warmup ({warmup} iterations) is not shorter than SOLVER.EPOCHS "
            f"{cfg.SOLVER.EPOCHS:g}: warming up for all but the last iteration"
        )
        warmup = cfg.SOLVER.MAX_ITER - 1
    cfg.SOLVER.WARMUP_ITERS = warmup
    if cfg.SOLVER.STEP_EPOCHS:
        cfg.SOLVER.STEPS = tuple(math.ceil(e * n / batch) for e in cfg.SOLVER.STEP_EPOCHS)
    logger.info(
        f"SOLVER.EPOCHS {cfg.SOLVER.EPOCHS:g} over {n} images at batch {batch}: "
        f"MAX_ITER {cfg.SOLVER.MAX_ITER}, WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS}"
        + (f", STEPS {cfg.SOLVER.STEPS}" if cfg.SOLVER.STEP_EPOCHS else "")
    )
