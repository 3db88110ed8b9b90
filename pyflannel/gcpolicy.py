"""Garbage collection for a daemon whose data lives long and forms no cycles.

With CPython's default thresholds, a burst of a thousand new leases (a few tens of
thousands of small objects that all survive) sets off several full collections of
10-40 ms each, which walk every lease and kernel entry the daemon holds and find
nothing to free: the latency of the burst doubles. Leases, entries and events are
freed by reference counting; the collector is only needed for the rare cycle
(exceptions with their tracebacks), which young collections find.
"""

from __future__ import annotations

import gc

# A young collection after this many new container objects (default 700); an older one
# every 20 young ones, a full one every 100 older ones (defaults 10 and 10).
THRESHOLDS = (20_000, 20, 100)


def tune() -> None:
    """Collect less often; set once, before the daemon starts its work."""
    gc.set_threshold(*THRESHOLDS)


def settle() -> None:
    """Once start-up is over: free its garbage, and keep what remains (modules, config,
    the daemon's own objects) out of every later collection."""
    gc.collect()
    gc.freeze()
