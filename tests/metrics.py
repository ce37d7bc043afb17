"""Metric values read through prometheus-client's public registry."""

from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    """The current value of the sample ``name`` with ``labels`` (0 when it does not exist yet)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value
