"""Heap tuning for a long-running server: the garbage collector's settings once started."""

from __future__ import annotations

import gc

#: Allocations (net) between young-generation collections while serving. Measured
#: at 32 connections (``bench/README.md``): garbage-collector time went from ~2.7 s
#: to ~0.4 s over a 17 s run, and p99 from 107 to ~60 ms, with ``gc.freeze``.
GC_YOUNG_THRESHOLD = 5000


def settle_heap() -> None:
    """Tune the garbage collector for serving, once start-up is done.

    Everything built so far (modules, the app, the pools) lives as long as the
    process, yet every full collection would walk it again: ``gc.freeze`` moves it
    out of the collector's sight. A request allocates thousands of short-lived
    container objects, so with the default young-generation threshold (700) the
    collector ran several times per request; see ``GC_YOUNG_THRESHOLD``.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
