"""The stand-in's log book without a server: times, cursors, backfill, line splitting."""

from __future__ import annotations

import pytest

from tests.runpod_fake.logs import (
    MAX_LINE_CHARS,
    Cursor,
    LineSplitter,
    LogBook,
    backfill,
    format_rfc3339,
    parse_last_event_id,
    parse_rfc3339,
)

T0 = 1_780_315_323_000_000  # 2026-06-01T12:02:03Z in microseconds


def test_rfc3339_round_trip_offsets_and_fractions():
    assert format_rfc3339(T0) == "2026-06-01T12:02:03.000000Z"
    assert parse_rfc3339("2026-06-01T12:02:03Z") == T0
    assert parse_rfc3339("2026-06-01T14:02:03+02:00") == T0
    assert parse_rfc3339("2026-06-01T11:32:03.5-00:30") == T0 + 500_000
    assert parse_rfc3339("2026-06-01T12:02:03.123456789Z") == T0 + 123_456
    for bad in ("2026-06-01", "2026-06-01T12:02:03", "yesterday", "2026-06-01T12:02:03+0200"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


def test_last_event_id_is_an_event_id_or_a_time():
    assert parse_last_event_id("2026-06-01T12:02:03.000000Z/000000000042") == Cursor(after_seq=42)
    assert parse_last_event_id("2026-06-01T12:02:03Z") == Cursor(after_micros=T0)
    for bad in ("nope/12", "2026-06-01T12:02:03Z/x", ""):
        with pytest.raises(ValueError):
            parse_last_event_id(bad)


def book_with(*entries: tuple[str, str, int]) -> LogBook:
    """Lines (source, text, microseconds after T0) appended with a clock that reads T0+..."""
    moments = iter([(T0 + offset) / 1_000_000 for _, _, offset in entries])
    book = LogBook(clock=lambda: next(moments))
    for source, text, _ in entries:
        book.append(source, text)
    return book


def test_backfill_rules():
    book = book_with(
        ("system", "start container", 0),
        ("container", "a", 10),
        ("container", "b", 10),  # the same time as "a"
        ("system", "note", 20),
        ("container", "c", 30),
    )
    lines = book.lines

    def texts(chosen):
        return [line.line for line in chosen]

    assert texts(backfill(lines, None)) == ["start container", "a", "b", "note", "c"]
    assert texts(backfill(lines, None, tail=2)) == ["note", "c"]
    assert texts(backfill(lines, "container", tail=2)) == ["b", "c"]
    assert backfill(lines, None, tail=0) == []
    # since is inclusive and wins over tail; the cursor wins over both.
    assert texts(backfill(lines, None, tail=1, since_micros=T0 + 10)) == ["a", "b", "note", "c"]
    resumed = backfill(lines, None, tail=1, since_micros=T0, cursor=Cursor(after_seq=2))
    assert texts(resumed) == ["b", "note", "c"]  # "b" shares "a"'s time, and still comes
    assert texts(backfill(lines, "system", cursor=Cursor(after_seq=1))) == ["note"]
    assert texts(backfill(lines, None, cursor=Cursor(after_micros=T0 + 10))) == ["note", "c"]


def test_ids_and_times_never_go_back():
    book = book_with(("container", "a", 50), ("container", "b", 0))  # the clock stepped back
    first, second = book.lines
    assert (first.seq, second.seq) == (1, 2)
    assert second.micros == first.micros
    assert second.id == f"{format_rfc3339(T0 + 50)}/000000000002"
    assert book.after(1, None) == [second] and book.after(2, None) == []


def test_the_book_keeps_its_newest_lines():
    book = LogBook(keep=3)
    for i in range(5):
        book.append("container", str(i))
    assert [line.line for line in book.lines] == ["2", "3", "4"]
    assert [line.line for line in book.after(3, "container")] == ["3", "4"]


def test_line_splitter():
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\r\nthr\xc3") == ["two"]  # CRLF ends a line; half a character waits
    assert splitter.feed(b"\xa9e\n\xff\n") == ["thr\u00e9e", "\ufffd"]
    assert splitter.feed(b"no newline") == []
    assert splitter.finish() == ["no newline"]
    long = LineSplitter()
    assert long.feed(b"x" * (2 * MAX_LINE_CHARS + 5)) == ["x" * MAX_LINE_CHARS] * 2
    assert long.feed(b"\n") == ["xxxxx"]
    assert long.finish() == []
