"""The service's long-lived objects out of the collector's full collections
(hub_service/heap.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from hub_service.background import cancel_and_wait
from hub_service.heap import keep_frozen
from tests.utils import eventually


class Record:
    pass


async def test_the_heap_is_frozen_once_ready_and_renewed():
    gc.collect()
    gc.unfreeze()
    ready = False
    cyclic = Record()
    cyclic.me = cyclic  # a cycle: only a full collection can free it
    gone = weakref.ref(cyclic)
    task = asyncio.create_task(keep_frozen(lambda: ready, renew_s=0.3))
    try:
        await asyncio.sleep(0.6)
        assert gc.get_freeze_count() == 0  # nothing before the first full list

        ready = True

        async def frozen() -> bool:
            return gc.get_freeze_count() > 0

        await eventually(frozen)
        del cyclic
        gc.collect()
        assert gone() is not None  # frozen: a full collection leaves it

        async def collected() -> bool:
            return gone() is None

        await eventually(collected)  # the renewal collects everything first
        assert gc.get_freeze_count() > 0
    finally:
        await cancel_and_wait(task)
        gc.unfreeze()


async def test_the_heap_is_frozen_again_once_the_queue_has_grown():
    gc.collect()
    gc.unfreeze()
    held = 0
    task = asyncio.create_task(
        keep_frozen(lambda: True, renew_s=3600, held=lambda: held, grown_by=1000, check_s=0.05)
    )
    try:

        async def frozen() -> int:
            return gc.get_freeze_count()

        first = await eventually(frozen)
        kept = [Record() for _ in range(20_000)]  # what 1,000 queued entries might hold
        await asyncio.sleep(0.3)
        assert gc.get_freeze_count() < first + len(kept)  # not grown enough: not frozen again
        held = 1000

        async def refrozen() -> bool:
            return gc.get_freeze_count() >= first + len(kept)

        await eventually(refrozen)  # long before the hour
    finally:
        await cancel_and_wait(task)
        gc.unfreeze()
