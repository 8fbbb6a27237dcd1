"""The service's long-lived objects kept out of the garbage collector's full collections.

Once it has listed the cluster, the service holds some 300,000 objects that the collector
can track (the inventory at 1,000 nodes and 30,000 pods, and the modules of
kubernetes_asyncio, tornado and SQLAlchemy), and a full collection walks them all: about
190 ms on a 2-core machine, with the event loop stopped. Under load it comes every few
seconds, as the objects of the requests in flight outlive the young collections and count
toward the next full one. Frozen (`gc.freeze`), they are left out of it: a full collection
then walks only what was made since.

Reference counting still frees a frozen object as soon as nothing refers to it (the
inventory replaces its records as the cluster changes); only a cycle among frozen objects
would stay. The freeze is renewed every `renew_s`: unfrozen, a full collection (which also
collects any such cycle), and everything still alive frozen again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("thinkube.heap")


def refreeze() -> tuple[int, float]:
    """Unfreeze, collect everything, freeze what is left: (objects frozen, seconds taken)."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), time.perf_counter() - started


async def keep_frozen(
    ready: Callable[[], bool],
    renew_s: float = 600.0,
    held: Callable[[], int] | None = None,
    grown_by: int = 2000,
    check_s: float = 1.0,
) -> None:
    """Freeze the heap once `ready()` (the first full list is in), and again every
    `renew_s` while it is, or as soon as `held()` (how many long-lived records the service
    keeps: the GPU queue's entries) has grown by `grown_by` since the last freeze: 10,000
    jobs queued in a minute would otherwise be walked by every full collection for ten.
    Runs until cancelled."""
    while True:
        if not ready():
            await asyncio.sleep(0.5)
            continue
        count, seconds = refreeze()
        log.debug("%d objects frozen out of full collections (%.0f ms)", count, seconds * 1000)
        frozen_held = held() if held is not None else 0
        renew_at = time.monotonic() + renew_s
        while (left := renew_at - time.monotonic()) > 0:
            await asyncio.sleep(min(check_s, left))
            if held is not None and held() - frozen_held >= grown_by:
                break
