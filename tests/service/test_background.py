"""Stopping the service's background loops (hub_service/background.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hub_service.background import cancel_and_wait


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_running_loop_is_cancelled_and_awaited():
    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(None)  # nothing started: nothing to do


async def test_a_loop_that_had_failed_is_logged_and_stopping_goes_on(caplog):
    async def fails() -> None:
        raise RuntimeError("scrape broke")

    task = asyncio.create_task(fails(), name="dcgm-scraper")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="thinkube.background"):
        await cancel_and_wait(task)
    assert "dcgm-scraper had stopped with an error: RuntimeError('scrape broke')" in caplog.text


async def test_cancelling_the_caller_still_cancels_the_caller():
    async def slow_to_end() -> None:
        try:
            await forever()
        finally:
            await asyncio.sleep(5)  # cleanup that outlasts the caller's patience

    loop_task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(loop_task))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    loop_task.cancel()
