"""Backend name (``LRUREC_BACKEND``) → factory, and the choice ``auto`` makes."""

import logging
from collections.abc import Callable

from model import Artifact, LRURec
from service.runtimes.protocol import Stepper
from service.runtimes.torch_runtime import TorchStepper

logger = logging.getLogger("service")

StepperFactory = Callable[[Artifact, str], Stepper]


def _onnx_stepper(artifact: Artifact, device: str) -> Stepper:
    from service.runtimes.onnx_runtime import OnnxStepper  # imports this module, so imported lazily

    return OnnxStepper(artifact, device)


def _numba_stepper(artifact: Artifact, device: str) -> Stepper:
    from service.runtimes.numba_runtime import NumbaStepper  # compiles kernels: only when chosen

    return NumbaStepper(artifact, device)


BACKENDS: dict[str, StepperFactory] = {
    "torch": TorchStepper,
    "onnx": _onnx_stepper,
    "numba": _numba_stepper,
}
"""Backend name (``LRUREC_BACKEND``) → factory. A new backend registers one line here."""


def resolve_backend(backend: str, artifact: Artifact, device: str) -> str:
    """The backend ``backend`` stands for: ``auto`` is numba for LRURec on the CPU (the fastest
    per event, benchmarks/RESULTS.md), torch otherwise; any other name is itself."""
    if backend == "auto":
        return "numba" if isinstance(artifact.model, LRURec) and device == "cpu" else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: auto, {', '.join(BACKENDS)}")
    return backend


def build_stepper(backend: str, artifact: Artifact, device: str) -> Stepper:
    """The configured backend (a :data:`BACKENDS` name or ``auto``) for ``artifact``."""
    return BACKENDS[resolve_backend(backend, artifact, device)](artifact, device)


def build_backend(setting: str, artifact: Artifact, device: str) -> tuple[str, Stepper]:
    """(backend name, stepper) for the ``LRUREC_BACKEND`` setting.

    A backend named explicitly fails start-up if it cannot be built. ``auto`` falls back to
    torch, with a logged warning, when its pick cannot (numba failing to compile on some CPU
    should cost speed, not the service).
    """
    backend = resolve_backend(setting, artifact, device)
    if setting != "auto" or backend == "torch":
        return backend, BACKENDS[backend](artifact, device)
    try:
        return backend, BACKENDS[backend](artifact, device)
    except Exception:
        logger.warning("the %s backend failed to build; auto falls back to torch", backend,
                       exc_info=True)  # fmt: skip
        return "torch", TorchStepper(artifact, device)
