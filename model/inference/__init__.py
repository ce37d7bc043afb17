"""Serving-only forms of the models: folded constants, ONNX export, exact top-k on large tables."""
