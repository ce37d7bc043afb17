"""Model runtimes behind the Stepper protocol: torch, onnxruntime, numba; int8 two-stage top-k."""
