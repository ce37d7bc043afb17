"""Serving logic: apply events and recommend (per-user locks, state cache, group-commit lane)."""
