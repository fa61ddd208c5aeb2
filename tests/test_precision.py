"""SOLVER.AMP on a CPU: bf16 autocast only where the CPU computes bf16 natively, else fp32."""
import torch
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer

from soco_d2 import add_config
from soco_d2.engine.ddp import CPUAutocastTrainer, build_step_trainer
from soco_d2.engine.precision import CpuFeatures, choose_cpu_precision, cpu_features

AMX = CpuFeatures(amx_bf16=True, avx512_bf16=True, capability="AVX512")
AVX512_BF16 = CpuFeatures(amx_bf16=False, avx512_bf16=True, capability="AVX512")
AVX2 = CpuFeatures(amx_bf16=False, avx512_bf16=False, capability="AVX2")


def test_bf16_only_with_native_support():
    assert choose_cpu_precision(True, AMX).dtype == torch.bfloat16
    assert choose_cpu_precision(True, AVX512_BF16).dtype == torch.bfloat16
    choice = choose_cpu_precision(True, AVX2)
    assert choice.dtype is None
    assert "no native bf16" in choice.reason and "AVX2" in choice.reason and "fp32" in choice.reason
    off = choose_cpu_precision(False, AMX)
    assert off.dtype is None and "SOLVER.AMP.ENABLED is False" in off.reason


def test_this_machine_is_described():
    f = cpu_features()
    assert isinstance(f.capability, str) and f.capability
    assert f.native_bf16 == (f.amx_bf16 or f.avx512_bf16)


def _cfg(amp, precision="bfloat16"):
    cfg = add_config(get_cfg())
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.SOLVER.AMP.PRECISION = precision
    return cfg


def test_step_trainer_follows_the_decision(caplog):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [[torch.zeros(1, 2)]]
    with caplog.at_level("INFO"):
        fast = build_step_trainer(_cfg(True), model, data, opt, cpu_features=AMX)
        slow = build_step_trainer(_cfg(True), model, data, opt, cpu_features=AVX2)
    assert isinstance(fast, CPUAutocastTrainer)
    assert type(slow) is SimpleTrainer
    assert any("no native bf16" in r.getMessage() for r in caplog.records)
    # fp16 is never used on a CPU; with native bf16 AMP still means bf16 there
    assert isinstance(build_step_trainer(_cfg(True, "float16"), model, data, opt, cpu_features=AMX),
                      CPUAutocastTrainer)
    assert type(build_step_trainer(_cfg(False), model, data, opt, cpu_features=AMX)) is SimpleTrainer
