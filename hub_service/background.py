"""The service's background work: one way to stop its loops (offers cache, reaper, local
inventory, DCGM scrape), and the threads its blocking calls run in."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

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


class DaemonThreadPool(ThreadPoolExecutor):
    """A fixed set of daemon threads for blocking calls (catalog SQL, psutil and NVML reads,
    name lookups), usable with ``loop.run_in_executor`` and as the loop's default executor.

    Unlike ThreadPoolExecutor's threads, which the interpreter joins at exit, a call stuck in
    a slow database or a hung driver never holds the process once the service has stopped:
    ``shutdown(wait=True)`` waits at most `join_timeout_s` for the calls under way, and the
    process then exits without them. A ThreadPoolExecutor in type only (asyncio takes no
    other kind as its default executor): submit and shutdown are its own, so none of the
    parent's threads is ever made."""

    def __init__(self, workers: int, name: str, join_timeout_s: float = 0.5) -> None:
        super().__init__(max_workers=workers, thread_name_prefix=name)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._submit_lock = threading.Lock()
        self.join_timeout_s = join_timeout_s
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._workers:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("cannot run new calls after the service has stopped")
            future: Future = Future()
            self._calls.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:
                future.set_exception(err)
            else:
                future.set_result(result)
                del result
            # nothing of this call is kept while the thread waits for the next
            del call, future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._submit_lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    self._cancel_queued()
                for _ in self._workers:
                    self._calls.put(None)
        if wait:
            deadline = time.monotonic() + self.join_timeout_s
            for thread in self._workers:
                thread.join(max(0.0, deadline - time.monotonic()))
            stuck = [thread.name for thread in self._workers if thread.is_alive()]
            if stuck:
                log.warning("not waiting for blocking calls still under way in %s", stuck)

    def _cancel_queued(self) -> None:
        """Cancel the calls no thread has taken yet (the stop markers go in after)."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                call[0].cancel()


__all__ = ["DaemonThreadPool", "cancel_and_wait"]
