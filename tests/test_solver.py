import pytest
import torch
from detectron2.config import get_cfg

from soco_d2 import add_soco_config
from soco_d2.solver import LARS, build_soco_optimizer, effective_lr, split_decay_params


def _model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    )


def test_bias_and_norm_params_are_excluded_and_frozen_ones_dropped():
    model = _model()
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    model.add_module("frozen", frozen)
    adapted, excluded = split_decay_params(model)
    assert {id(p) for p in adapted} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in excluded} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)
    }


def test_lars_step_matches_formula_and_leaves_excluded_params_unscaled():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 10))
    b = torch.nn.Parameter(torch.randn(10))
    lr, wd, eta = 0.5, 1e-2, 1e-3
    opt = LARS([{"params": [w], "weight_decay": wd, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=lr, momentum=0.9, trust_coef=eta, eps=1e-8)
    w.grad, b.grad = torch.randn(10, 10), torch.randn(10)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    opt.step()
    g = gw + wd * w0
    ratio = eta * w0.norm() / (g.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), w0 - lr * ratio * g)
    # bias: plain SGD step, no trust ratio, no decay
    torch.testing.assert_close(b.detach(), b0 - lr * gb)
    # second step uses momentum on the scaled gradient
    w.grad, b.grad = gw.clone(), gb.clone()
    w1 = w.detach().clone()
    opt.step()
    g1 = gw + wd * w1
    ratio1 = eta * w1.norm() / (g1.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), w1 - lr * (0.9 * ratio * g + ratio1 * g1))
    torch.testing.assert_close(b.detach(), b0 - lr * gb - lr * (0.9 * gb + gb))


def test_zero_weight_gets_unit_trust_ratio():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=1.0, momentum=0.0, trust_coef=1e-3)
    w.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(w.detach(), -torch.ones(3))


def test_lr_is_scaled_by_total_batch():
    cfg = add_soco_config(get_cfg())
    cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR_BATCH = 1.0, 2048, 256
    assert effective_lr(cfg) == 8.0
    opt = build_soco_optimizer(cfg, _model())
    assert isinstance(opt, LARS)
    assert [g["lr"] for g in opt.param_groups] == [8.0, 8.0]
    assert [g["lars"] for g in opt.param_groups] == [True, False]
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.SOLVER.WEIGHT_DECAY, 0.0]
    cfg.SOLVER.BASE_LR_BATCH = 0
    assert effective_lr(cfg) == 1.0


@pytest.mark.parametrize("optimizer", ["LARS", "SGD"])
def test_bias_norm_lr_factor_scales_the_excluded_group_and_the_schedule_keeps_it(optimizer):
    from detectron2.solver import build_lr_scheduler

    cfg = add_soco_config(get_cfg())
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR_BATCH = optimizer, 2.0, 0
    cfg.SOLVER.BIAS_NORM_LR_FACTOR = 0.1
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.LR_SCHEDULER_NAME = 10, 0, "WarmupCosineLR"
    opt = build_soco_optimizer(cfg, _model())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.0, 0.2])
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] < 2.0 and lrs[1] == pytest.approx(lrs[0] * 0.1)


def test_epochs_become_iterations_and_warmup_stays_shorter():
    from soco_d2.solver import resolve_epochs

    cfg = add_soco_config(get_cfg())
    cfg.DATASETS.TRAIN = ("a", "b")
    sizes = {"a": 1000, "b": 281}
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.EPOCHS, cfg.SOLVER.WARMUP_EPOCHS = 256, 100, 10
    resolve_epochs(cfg, sizes.__getitem__)
    assert cfg.SOLVER.MAX_ITER == 501  # ceil(100 * 1281 / 256)
    assert cfg.SOLVER.WARMUP_ITERS == 51  # ceil(10 * 1281 / 256)
    cfg.SOLVER.EPOCHS, cfg.SOLVER.WARMUP_EPOCHS = 1, 2
    resolve_epochs(cfg, sizes.__getitem__)
    assert cfg.SOLVER.MAX_ITER == 6 and cfg.SOLVER.WARMUP_ITERS == 5
    cfg.SOLVER.EPOCHS, cfg.SOLVER.MAX_ITER = 0, 77
    resolve_epochs(cfg, sizes.__getitem__)  # EPOCHS 0: iterations are left as they are
    assert cfg.SOLVER.MAX_ITER == 77
