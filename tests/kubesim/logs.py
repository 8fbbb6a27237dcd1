"""Container logs as the kubelet keeps and serves them.

A ``LogBuffer`` holds one container instance's output (stdout and stderr interleaved, as they
were written), each line with the time it was read. The log request's options are applied
in the kubelet's order: ``tailLines`` picks the last lines, ``sinceTime``/``sinceSeconds``
drops older ones, ``timestamps`` prefixes each line with its RFC 3339 time (nanoseconds, fixed
width, UTC), and ``limitBytes`` cuts the output, prefixes included.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

# The kubelet rotates a container's log at 10 MiB; a line count keeps this one bounded too.
MAX_LINES = 20000


class LogBuffer:
    """One container instance's output, appended as it is read; followers wait for more."""

    def __init__(self, max_lines: int = MAX_LINES):
        self.lines: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=max_lines)
        self.total = 0  # lines ever appended: a follower's position survives trimming
        self.closed = False
        self._waiters: list[asyncio.Future] = []

    def append(self, line: bytes, at_ns: int | None = None) -> None:
        self.lines.append((at_ns if at_ns is not None else time.time_ns(), line))
        self.total += 1
        self._wake()

    def close(self) -> None:
        """The container instance ended: nothing more will come."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self) -> None:
        """Until a line is appended or the buffer is closed."""
        if self.closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def since(self, position: int) -> list[tuple[int, bytes]]:
        """The lines from absolute position ``position`` on (those still kept)."""
        first = self.total - len(self.lines)
        start = max(position, first) - first
        return list(self.lines)[start:]

    def text(self) -> str:
        return b"".join(line for _, line in self.lines).decode(errors="replace")


def rfc3339_nano(at_ns: int) -> str:
    """The kubelet's RFC3339NanoFixed in UTC: 2024-05-01T12:00:00.000000042Z."""
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


@dataclass(frozen=True)
class LogOptions:
    """A log request's options (``PodLogOptions``), checked."""

    container: str | None = None
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    since_ns: int | None = None  # from sinceTime or sinceSeconds, as a time
    tail_lines: int | None = None
    limit_bytes: int | None = None


def select(lines: Iterable[tuple[int, bytes]], options: LogOptions) -> list[tuple[int, bytes]]:
    """What a request shows of the lines already there: tail first, then since."""
    chosen = list(lines)
    if options.tail_lines is not None:
        chosen = chosen[len(chosen) - options.tail_lines :] if options.tail_lines else []
    if options.since_ns is not None:
        chosen = [(at, line) for at, line in chosen if at >= options.since_ns]
    return chosen


def render(line: tuple[int, bytes], options: LogOptions) -> bytes:
    at, text = line
    return (rfc3339_nano(at).encode() + b" " + text) if options.timestamps else text


async def stream(buffer: LogBuffer, options: LogOptions) -> AsyncIterator[bytes]:
    """The bytes a request gets: what is there, then (with follow) what comes until the
    container instance ends, within limitBytes."""
    left = options.limit_bytes
    position = buffer.total
    pending = select(buffer.since(0), options)
    while True:
        for line in pending:
            chunk = render(line, options)
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            if chunk:
                yield chunk
            if left is not None and left <= 0:
                return
        if not options.follow or buffer.closed and position >= buffer.total:
            return
        if position >= buffer.total:
            await buffer.wait()
        fresh = buffer.since(position)
        position = buffer.total
        if options.since_ns is not None:
            fresh = [(at, line) for at, line in fresh if at >= options.since_ns]
        pending = fresh


__all__ = ["LogBuffer", "LogOptions", "render", "rfc3339_nano", "select", "stream"]
