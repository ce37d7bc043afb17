"""Garbage-collector settings for a process that allocates a few short-lived objects per event.

Python starts a young-generation collection every 700 net allocations, and each full collection
walks every live object, including the thousands that start-up left (torch, numba, the model,
the app). A stream consumer allocates dozens of objects per event, so at thousands of events per
second it spent about a fifth of its time collecting (benchmarks/RESULTS.md, stream ingestion).
"""

import gc


def tune_garbage_collector(young_threshold: int) -> None:
    """Move everything allocated so far out of the collector's sight (``gc.freeze``: start-up
    objects live as long as the process) and collect the young generation every
    ``young_threshold`` net allocations; the older generations keep Python's ratios.
    ``young_threshold <= 0`` leaves the collector as Python set it."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def thaw_frozen_objects() -> None:
    """Hand the frozen objects back to the collector. Called when the model is switched: the
    old engine is a reference cycle (with its event lane), which only a collection frees, and
    the collector never looks at frozen objects."""
    gc.unfreeze()
