"""A larger young generation for CPython's cycle collector while batches run.

A batch keeps its in-flight programs' objects alive for a moment each (64 programs at once by
default). With CPython's default threshold (a young collection every 700 net allocations) many
of those objects outlive two young collections, get promoted to the oldest generation, and set
off full collections that walk the whole heap and find no garbage (the objects are freed by
reference counting a moment later). On bench/compare.py's zero-latency server that was about
a third of lmprog's own CPU per program (docs/performance.md). A larger first threshold lets
them die young, and a rarer middle collection keeps the survivors (finished programs' states,
alive until the batch returns) from being walked again and again.

The thresholds are the process's, so they are raised when the first batch starts and put back
when the last one ends, unless someone else changed them meanwhile. A collector that is off
(threshold 0) or already larger is left alone. `lp.global_config.batch_gc_threshold = None`
turns this off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MIDDLE_EVERY = 50  # young collections per middle-generation collection while batches run

_lock = threading.Lock()
_running = 0
_restore: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (saved, ours)


@contextmanager
def young_generation(threshold: int | None) -> Iterator[None]:
    """Within the block (and any overlapping ones), young collections every `threshold` net
    allocations at least; None leaves the collector alone."""
    global _running, _restore
    with _lock:
        current = gc.get_threshold()
        if _running == 0 and threshold is not None and 0 < current[0] < threshold:
            # the middle generation, collected every 10 young collections by default, would
            # then hold ~10x threshold objects, nearly all alive (finished programs' states)
            ours = (threshold, max(current[1], MIDDLE_EVERY), *current[2:])
            gc.set_threshold(*ours)
            _restore = (current, ours)
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _restore is not None:
                before, raised = _restore
                if gc.get_threshold() == raised:
                    gc.set_threshold(*before)
                _restore = None
