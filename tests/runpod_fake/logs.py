"""A pod's log as RunPod's REST v2 serves it (`GET /v2/pods/{id}/logs`): numbered lines from
two sources, `container` (the process's stdout and stderr, interleaved as written) and
`system` (the host's lifecycle lines), each with an RFC 3339 time.

Event ids are `<ts>/<sequence>`, the sequence counting every line of the pod from 1, so that
a client that resumes with the last id it saw (`Last-Event-ID`) gets exactly the lines after
it, even where several lines share one time. A bare RFC 3339 time is accepted as a cursor too
(the lines after it)."""

from __future__ import annotations

import asyncio
import codecs
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SOURCES = ("container", "system")
TAIL_DEFAULT = 100
TAIL_MAX = 5000
# What a pod keeps; RunPod backfills at most TAIL_MAX, a resume may reach further back.
KEEP_LINES = 20_000
# A container runtime splits longer lines (Docker: 16 KiB); a progress bar that never ends
# its line still comes out in pieces.
MAX_LINE_CHARS = 16 * 1024

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time as microseconds since the epoch; ValueError when it is not one."""
    match = _RFC3339.match(text.strip())
    if not match:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    moment = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
    )
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        moment -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    micros = int(((fraction or "") + "000000")[:6])
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + micros


def format_rfc3339(micros: int) -> str:
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_id(ts: str, seq: int) -> str:
    return f"{ts}/{seq:012d}"


@dataclass(frozen=True)
class Cursor:
    """Where a resumed stream starts: after a sequence number, or after a time."""

    after_seq: int | None = None
    after_micros: int | None = None


def parse_last_event_id(value: str) -> Cursor:
    """A `Last-Event-ID` this endpoint emitted (`<ts>/<seq>`), or a bare RFC 3339 time."""
    value = value.strip()
    ts, slash, seq = value.rpartition("/")
    if slash:
        if not seq.isdigit():
            raise ValueError(f"not a log event id: {value!r}")
        parse_rfc3339(ts)
        return Cursor(after_seq=int(seq))
    return Cursor(after_micros=parse_rfc3339(value))


@dataclass(frozen=True)
class LogLine:
    seq: int
    micros: int
    source: str
    line: str

    @property
    def ts(self) -> str:
        return format_rfc3339(self.micros)

    @property
    def id(self) -> str:
        return event_id(self.ts, self.seq)

    def payload(self) -> dict[str, str]:
        return {"ts": self.ts, "source": self.source, "line": self.line}


def backfill(
    lines: list[LogLine],
    source: str | None,
    tail: int = TAIL_DEFAULT,
    since_micros: int | None = None,
    cursor: Cursor | None = None,
) -> list[LogLine]:
    """The lines a new stream sends first. The cursor (Last-Event-ID) wins over `since`,
    `since` (inclusive) over `tail`, as RunPod documents."""
    chosen = [line for line in lines if source is None or line.source == source]
    if cursor is not None:
        if cursor.after_seq is not None:
            return [line for line in chosen if line.seq > cursor.after_seq]
        return [line for line in chosen if line.micros > (cursor.after_micros or 0)]
    if since_micros is not None:
        return [line for line in chosen if line.micros >= since_micros]
    return chosen[-tail:] if tail else []


class LogBook:
    """One pod's lines, and a way to wait for the next one (or any change of the pod)."""

    def __init__(self, clock: Callable[[], float] | None = None, keep: int = KEEP_LINES) -> None:
        self._clock = clock or time.time
        self._keep = keep
        self.lines: list[LogLine] = []
        self._seq = 0
        self._last_micros = 0
        self._changed = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, source: str, line: str) -> LogLine:
        assert source in SOURCES
        self._seq += 1
        # Never earlier than the line before, whatever the wall clock does.
        micros = max(int(self._clock() * 1_000_000), self._last_micros)
        self._last_micros = micros
        entry = LogLine(self._seq, micros, source, line)
        self.lines.append(entry)
        if len(self.lines) > self._keep:
            del self.lines[: len(self.lines) - self._keep]
        self.poke()
        return entry

    def after(self, seq: int, source: str | None) -> list[LogLine]:
        """The lines numbered above `seq` (of one source, or both)."""
        if seq >= self._seq:
            return []
        start = len(self.lines)
        while start > 0 and self.lines[start - 1].seq > seq:
            start -= 1
        return [line for line in self.lines[start:] if source is None or line.source == source]

    def poke(self) -> None:
        """Wake every waiter: a line came, or the pod changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """The event the next change sets (take it before looking at the state)."""
        return self._changed


class LineSplitter:
    """Bytes from a process's output as whole lines (decoded as UTF-8, invalid bytes
    replaced; long lines cut at MAX_LINE_CHARS); `finish` gives the unterminated rest."""

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._max = max_chars

    def feed(self, data: bytes) -> list[str]:
        self._buffer += self._decoder.decode(data)
        out = []
        while True:
            newline = self._buffer.find("\n")
            if newline == -1 or newline > self._max:
                if len(self._buffer) > self._max:
                    out.append(self._buffer[: self._max])
                    self._buffer = self._buffer[self._max :]
                    continue
                break
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            out.append(line.removesuffix("\r"))
        return out

    def finish(self) -> list[str]:
        self._buffer += self._decoder.decode(b"", final=True)
        rest, self._buffer = self._buffer, ""
        out = []
        while len(rest) > self._max:
            out.append(rest[: self._max])
            rest = rest[self._max :]
        if rest:
            out.append(rest.removesuffix("\r"))
        return out
