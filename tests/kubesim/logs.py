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
from collections.abc import AsyncIterator, Iterable, Mapping
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


class LogRequestError(Exception):
    """A log request the apiserver refuses: (code, reason, message)."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _flag(args: Mapping[str, str], name: str) -> bool:
    raw = args.get(name)
    if raw is None or raw in _FALSE or raw == "":
        return False
    if raw in _TRUE:
        return True
    raise LogRequestError(400, "BadRequest", f'{name} must be true or false, not "{raw}"')


def _whole(args: Mapping[str, str], name: str) -> int | None:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise LogRequestError(
            400, "BadRequest", f'{name} must be a whole number, not "{raw}"'
        ) from None


def _time_ns(raw: str) -> int:
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise LogRequestError(
            400,
            "BadRequest",
            f'sinceTime must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not "{raw}"',
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000


def parse_options(args: Mapping[str, str], pod_name: str, now_ns: int | None = None) -> LogOptions:
    """``PodLogOptions`` from a request's query, checked as ``ValidatePodLogOptions`` does."""
    tail, limit, since_seconds = (
        _whole(args, "tailLines"),
        _whole(args, "limitBytes"),
        _whole(args, "sinceSeconds"),
    )
    since_time = args.get("sinceTime")
    errors = []
    if tail is not None and tail < 0:
        errors.append(f"tailLines: Invalid value: {tail}: must be greater than or equal to 0")
    if limit is not None and limit < 1:
        errors.append(f"limitBytes: Invalid value: {limit}: must be greater than 0")
    if since_seconds is not None and since_time is not None:
        errors.append(": Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified")
    elif since_seconds is not None and since_seconds < 1:
        errors.append(f"sinceSeconds: Invalid value: {since_seconds}: must be greater than 0")
    if errors:
        detail = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        raise LogRequestError(422, "Invalid", f'PodLogOptions "{pod_name}" is invalid: {detail}')
    since_ns = None
    if since_time is not None:
        since_ns = _time_ns(since_time)
    elif since_seconds is not None:
        since_ns = (now_ns if now_ns is not None else time.time_ns()) - since_seconds * 10**9
    return LogOptions(
        container=args.get("container") or None,
        follow=_flag(args, "follow"),
        previous=_flag(args, "previous"),
        timestamps=_flag(args, "timestamps"),
        since_ns=since_ns,
        tail_lines=tail,
        limit_bytes=limit,
    )


def choose_container(pod: Mapping, wanted: str | None) -> str:
    """The container a request reads (the apiserver's ``validateContainer``)."""
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    names = [
        c["name"]
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]
    if wanted:
        if wanted not in names:
            raise LogRequestError(
                400, "BadRequest", f"container {wanted} is not valid for pod {name}"
            )
        return wanted
    containers = spec.get("containers") or []
    if len(containers) == 1:
        return containers[0]["name"]
    message = f"a container name must be specified for pod {name}"
    if containers:
        message += f", choose one of: [{' '.join(names)}]"
    raise LogRequestError(400, "BadRequest", message)


def check_container_state(pod: Mapping, container: str, previous: bool) -> None:
    """The kubelet's ``validateContainerLogStatus``: is there a log to read?"""
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    found = next(
        (
            s
            for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
            for s in status.get(key) or []
            if s.get("name") == container
        ),
        None,
    )
    if found is None:
        raise LogRequestError(
            400, "BadRequest", f'container "{container}" in pod "{name}" is not available'
        )
    state, last = found.get("state") or {}, found.get("lastState") or {}
    if previous:
        if not (last.get("terminated") or {}).get("containerID"):
            raise LogRequestError(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{name}" not found',
            )
        return
    if "running" in state or "terminated" in state or "terminated" in last:
        return
    if "waiting" in state:
        reason = (state["waiting"] or {}).get("reason", "")
        raise LogRequestError(
            400,
            "BadRequest",
            f'container "{container}" in pod "{name}" is waiting to start: {reason}',
        )
    raise LogRequestError(
        400,
        "BadRequest",
        f'container "{container}" in pod "{name}" is waiting to start - no logs yet',
    )


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


__all__ = [
    "LogBuffer",
    "LogOptions",
    "LogRequestError",
    "check_container_state",
    "choose_container",
    "parse_options",
    "render",
    "rfc3339_nano",
    "select",
    "stream",
]
