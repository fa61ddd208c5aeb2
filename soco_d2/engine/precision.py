"""Which precision a training step runs in, chosen from what the hardware runs natively.

``SOLVER.AMP.ENABLED`` asks for mixed precision. On a GPU that is Detectron2's AMPTrainer in
``SOLVER.AMP.PRECISION`` (fp16 with loss scaling, or bf16). On a CPU, bf16 autocast pays off
only where the CPU computes bf16 natively (AMX or AVX512-BF16; measured on a 2-core AMD EPYC
with AVX512-BF16 and no AMX: an R50-FPN SoCo step 2.06 s in bf16 vs 3.54 s in fp32, 1.7x);
elsewhere PyTorch emulates it and a step is an order of magnitude SLOWER than fp32
(measured: an R50-FPN SoCo step 66 s in bf16 vs 4.7-5.0 s in fp32 on an AVX2-only AMD EPYC).
So on a CPU, mixed precision means bf16 where it is native and fp32 everywhere else, and the
log says which and why. fp16 is never used on a CPU.
"""
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["CpuFeatures", "cpu_features", "PrecisionChoice", "choose_cpu_precision"]


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU instruction sets that decide bf16 speed."""

    amx_bf16: bool
    avx512_bf16: bool
    capability: str  # PyTorch's dispatch level: "AVX2", "AVX512", ...

    @property
    def native_bf16(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16


def _flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except RuntimeError:
        return False


def cpu_features() -> CpuFeatures:
    """What this machine's CPU supports, as PyTorch's cpuinfo sees it."""
    return CpuFeatures(
        amx_bf16=_flag("_is_amx_tile_supported"),
        avx512_bf16=_flag("_is_avx512_bf16_supported"),
        capability=torch.backends.cpu.get_cpu_capability(),
    )


@dataclass(frozen=True)
class PrecisionChoice:
    """``dtype`` None means fp32; ``reason`` is the log line that explains the choice."""

    dtype: Optional[torch.dtype]
    reason: str


def choose_cpu_precision(amp_enabled: bool, features: Optional[CpuFeatures] = None) -> PrecisionChoice:
    """bf16 autocast when AMP is on and the CPU has native bf16, else fp32.

    Args:
        amp_enabled: ``SOLVER.AMP.ENABLED``.
        features: the CPU's features (default: this machine's, :func:`cpu_features`).
    """
    if not amp_enabled:
        return PrecisionChoice(None, "SOLVER.AMP.ENABLED is False: training in fp32")
    f = cpu_features() if features is None else features
    if f.native_bf16:
        units = " and ".join(n for n, ok in (("AMX", f.amx_bf16), ("AVX512-BF16", f.avx512_bf16)) if ok)
        return PrecisionChoice(
            torch.bfloat16, f"SOLVER.AMP.ENABLED on CPU: this CPU computes bf16 natively ({units}): bf16 autocast"
        )
    return PrecisionChoice(
        None,
        f"SOLVER.AMP.ENABLED on CPU, but this CPU ({f.capability}) has no native bf16 (no AMX, no "
        "AVX512-BF16), where bf16 autocast is ~13x slower than fp32: training in fp32",
    )
