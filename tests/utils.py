"""Small helpers the test modules share."""

from __future__ import annotations

import asyncio

import pytest


async def eventually(predicate, within: float = 10.0, interval: float = 0.05):
    """Await `predicate()` until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await predicate()
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(interval)
