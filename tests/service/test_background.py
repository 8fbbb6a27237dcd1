"""Stopping the service's background loops, and the daemon threads its blocking calls run
in (hub_service/background.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from hub_service.background import DaemonThreadPool, cancel_and_wait


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


# --- the threads blocking calls run in ------------------------------------------------------


async def test_the_pool_runs_blocking_calls_for_the_loop():
    pool = DaemonThreadPool(2, "test-pool")
    loop = asyncio.get_running_loop()
    try:
        results = await asyncio.gather(*(loop.run_in_executor(pool, pow, 2, n) for n in range(10)))
        assert results == [2**n for n in range(10)]
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(pool, divmod, 1, 0)
        assert all(thread.daemon for thread in threading.enumerate() if "test-pool" in thread.name)
    finally:
        pool.shutdown(wait=True)
    assert not any("test-pool" in thread.name for thread in threading.enumerate())


def test_shutdown_does_not_wait_for_a_stuck_call_and_cancels_the_queued(caplog):
    release = threading.Event()
    pool = DaemonThreadPool(1, "stuck-pool", join_timeout_s=0.2)
    stuck = pool.submit(release.wait, 30)
    queued = pool.submit(pow, 2, 3)
    time.sleep(0.05)  # the one thread has taken the stuck call
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="thinkube.background"):
        pool.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 1
    assert "not waiting for blocking calls still under way in ['stuck-pool-0']" in caplog.text
    assert queued.cancelled()
    assert not stuck.done()
    with pytest.raises(RuntimeError, match="after the service has stopped"):
        pool.submit(pow, 2, 3)
    release.set()
    assert stuck.result(5) is True


def test_asyncio_takes_the_pool_as_its_default_executor_and_does_not_wait_on_it():
    release = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(DaemonThreadPool(2, "default-pool", join_timeout_s=0.2))
        loop.run_in_executor(None, release.wait, 30)  # never awaited: stuck past the end
        assert await loop.run_in_executor(None, pow, 3, 2) == 9

    started = time.monotonic()
    asyncio.run(main())  # ends by shutting down the default executor
    assert time.monotonic() - started < 2
    release.set()
