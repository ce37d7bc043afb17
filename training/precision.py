"""Mixed precision for training: bf16 autocast where the hardware computes bf16 natively.

Under ``torch.autocast`` the matrix products (the 3,417-way output layer is most of a step) run
in bfloat16, while the weights, the optimiser state, LayerNorm, the softmax and the LRU's complex
recurrence stay in float32. Without native bf16 (e.g. AVX2-only CPUs) it is emulated and slower,
so ``auto`` picks it only where the hardware has it. Validation and the artifact are float32.
"""

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
Arithmetic = Literal["fp32", "bf16"]
"""What a run computes in, once ``auto`` is resolved."""

# x86 flags of native bf16 arithmetic (AVX-512 BF16 dot products, AMX tiles).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU lists a native x86 bf16 instruction set (Linux ``/proc/cpuinfo``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not CPU_BF16_FLAGS.isdisjoint(line.split(":", 1)[-1].split())
    return False


def resolve(precision: Precision, device: str) -> Arithmetic:
    """The precision a run uses: ``auto`` is bf16 where ``device`` computes it natively."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: Arithmetic, device: str) -> AbstractContextManager[object]:
    """The context a training forward pass runs in."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
