"""The service's background loops (offers cache, reaper, local inventory, DCGM scrape):
one way to stop them."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("thinkube.background")


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel `task` and wait until it has ended. Its own cancellation is swallowed, what it
    raised is logged (stopping goes on); a cancellation of the caller still propagates."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():  # the caller itself was cancelled
            raise
    except Exception as err:  # the loop had failed: it is stopped either way
        log.warning("%s had stopped with an error: %r", task.get_name(), err)
