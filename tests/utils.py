"""Small helpers the test modules share."""

from __future__ import annotations

import asyncio
import os
import signal


async def eventually(predicate, within: float = 10.0, interval: float = 0.05):
    """Await `predicate()` until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await predicate()
        if result:
            return result
        if loop.time() > deadline:
            import pytest  # here, so that kubesim (`make dev`) runs without pytest

            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def stop_process_group(
    process: asyncio.subprocess.Process | None, grace_s: float = 5.0
) -> None:
    """SIGTERM a process started with start_new_session, SIGKILL its group after the grace."""
    if process is None or process.returncode is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    except ProcessLookupError:
        pass
