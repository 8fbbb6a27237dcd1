"""Idle GPUs given back: the pure half. A bounded history of each notebook server's GPU
utilisation, the admin's policy per group, and the decision (warn, stop, nothing) with its
reason in words. No I/O here: :mod:`hub_service.gpu_culler` feeds it samples and acts.

A server is *idle* when every GPU it holds stayed below the policy's threshold for the
policy's idle time, without a gap in the samples, and none of its kernels is busy. A missing
sample is never read as idle: no data means no action, and a gap restarts the clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "GpuReading",
    "IdleDecision",
    "IdlePolicy",
    "PolicyError",
    "UsageWindow",
    "decide",
    "duration_words",
    "gpu_label",
    "iso_time",
    "policy_for",
    "policy_from_settings",
]

# States of a decision, as the API and the page show them.
OFF = "off"  # the person's groups have no culling
NO_DATA = "no-data"  # no GPU metrics now: no action
ACTIVE = "active"  # a GPU was busy within the idle time (or a keep, or a gap, since)
KERNEL_BUSY = "kernel-busy"  # the GPUs idle, but a kernel is busy
KERNELS_UNKNOWN = "kernels-unknown"  # the GPUs idle, the kernels could not be read
WARNED = "warned"  # idle long enough: stops at stop_at unless kept or busy again
STOP = "stop"  # warned, and the grace period is over


class PolicyError(ValueError):
    """A policy setting that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class IdlePolicy:
    """When a server holding GPUs counts as idle, and how long it is warned first."""

    enabled: bool = False
    threshold_percent: float = 5.0
    idle_seconds: float = 2 * 3600.0
    grace_seconds: float = 30 * 60.0

    def checked(self) -> IdlePolicy:
        for name in ("threshold_percent", "idle_seconds", "grace_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise PolicyError(f"{name} must be a number of at least 0 (it is {value!r})")
        if self.threshold_percent > 100:
            raise PolicyError(
                f"threshold_percent is a percentage, 0 to 100 (it is {self.threshold_percent})"
            )
        if self.idle_seconds <= 0:
            raise PolicyError("idle_seconds must be more than 0")
        return self


_POLICY_FIELDS = ("enabled", "threshold_percent", "idle_seconds", "grace_seconds")


def policy_from_settings(
    default: IdlePolicy, settings: Mapping[str, Any], where: str
) -> IdlePolicy:
    """`default` with the fields `settings` names (a group's entry); PolicyError names
    `where` for an unknown field or a bad value."""
    unknown = sorted(set(settings) - set(_POLICY_FIELDS))
    if unknown:
        raise PolicyError(
            f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(_POLICY_FIELDS)})"
        )
    changes: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "enabled":
            if not isinstance(value, bool):
                raise PolicyError(f"{where}: enabled must be True or False")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"{where}: {name} must be a number")
        changes[name] = value
    try:
        return replace(default, **changes).checked()
    except PolicyError as err:
        raise PolicyError(f"{where}: {err}") from None


def policy_for(
    groups: Iterable[str], default: IdlePolicy, per_group: Mapping[str, IdlePolicy]
) -> IdlePolicy:
    """The policy of a person in `groups`. Without a group entry: the default. A group that
    turns culling off exempts its members; otherwise the most lenient of their groups' entries
    applies (the highest threshold is *not* lenient: the lowest is)."""
    entries = [per_group[g] for g in sorted(set(groups)) if g in per_group]
    if not entries:
        return default
    if any(not entry.enabled for entry in entries):
        return replace(default, enabled=False)
    return IdlePolicy(
        enabled=True,
        threshold_percent=min(e.threshold_percent for e in entries),
        idle_seconds=max(e.idle_seconds for e in entries),
        grace_seconds=max(e.grace_seconds for e in entries),
    )


# --- the history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuReading:
    """One GPU of a server at one moment; utilization None: no metric for it now."""

    key: str  # the GPU's UUID, or "node/index" when the exporter gives none
    label: str  # how a person names it: "GPU 0 (A100)"
    utilization: float | None


@dataclass
class UsageWindow:
    """A server's samples, oldest first, kept for `keep_seconds` and at most `max_samples`
    (whichever is fewer). A sample is (time, readings); a reading list that is empty, or has
    a GPU without utilisation, is a moment without data."""

    keep_seconds: float
    max_samples: int = 2000
    samples: deque = field(default_factory=deque)

    def add(self, at: float, readings: list[GpuReading]) -> None:
        if self.samples and at <= self.samples[-1][0]:
            return  # never out of order: time only goes forward here
        self.samples.append((at, tuple(readings)))
        while len(self.samples) > self.max_samples:
            self.samples.popleft()
        while self.samples and self.samples[0][0] < at - self.keep_seconds:
            self.samples.popleft()

    def points(self, since: float | None = None) -> list[dict]:
        """The history as the API shows it: one point per sample, per GPU."""
        return [
            {
                "at": iso_time(at),
                "gpus": [{"gpu": r.label, "utilization": r.utilization} for r in readings],
            }
            for at, readings in self.samples
            if since is None or at >= since
        ]


def gpu_label(index: Any, model: str = "", instance: str = "") -> str:
    """How a person names a GPU: ``GPU 0 (A100)``, ``GPU 1 MIG 2 (H100)``."""
    short = model.removeprefix("NVIDIA ").strip()
    first, _, rest = short.partition(" ")
    if "-" in first and not rest:
        short = first.split("-", 1)[0]  # A100-SXM4-80GB -> A100
    where = f"GPU {index}" + (f" MIG {instance}" if instance else "")
    return f"{where} ({short})" if short else where


def _complete(readings: tuple[GpuReading, ...]) -> bool:
    return bool(readings) and all(r.utilization is not None for r in readings)


# --- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleDecision:
    state: str
    reason: str  # in words, for the person and the log
    idle_since: float | None = None
    stop_at: float | None = None
    # per GPU over the idle run: label -> (lowest, highest) utilisation
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def document(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "idle_since": iso_time(self.idle_since) if self.idle_since is not None else None,
            "idle_seconds": round(now - self.idle_since, 1)
            if self.idle_since is not None
            else None,
            "stop_at": iso_time(self.stop_at) if self.stop_at is not None else None,
            "gpus": [
                {"gpu": label, "lowest": low, "highest": high}
                for label, (low, high) in self.ranges.items()
            ],
        }


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def duration_words(seconds: float) -> str:
    """`45 s`, `12 min`, `2 h 10 min`, `3 d 4 h`."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total} s"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M UTC")


def _percent(value: float) -> str:
    return f"{value:.0f}"


def _ranges_words(ranges: Mapping[str, tuple[float, float]]) -> str:
    parts = []
    for label, (low, high) in ranges.items():
        span = (
            _percent(low)
            if _percent(low) == _percent(high)
            else f"{_percent(low)}–{_percent(high)}"
        )
        parts.append(f"{label} at {span} %")
    return ", ".join(parts)


def idle_run(
    samples: Iterable[tuple[float, tuple[GpuReading, ...]]],
    threshold: float,
    now: float,
    max_gap: float,
    since: float | None = None,
) -> tuple[float | None, dict[str, tuple[float, float]], bool]:
    """The start of the run of idle samples that reaches up to now (None: not idle now),
    each GPU's lowest and highest utilisation over it, and whether there is data now.

    The run is broken by a sample with a GPU at or above `threshold`, by a sample without
    data, by a gap of more than `max_gap` seconds between samples (or since the last), and
    by `since` (a keep). The GPUs must be the same all along the run."""
    ordered = list(samples)
    if not ordered or now - ordered[-1][0] > max_gap or not _complete(ordered[-1][1]):
        return None, {}, False
    start: float | None = None
    ranges: dict[str, tuple[float, float]] = {}
    keys = {r.key for r in ordered[-1][1]}
    later = now
    for at, readings in reversed(ordered):
        if since is not None and at < since:
            break
        if later - at > max_gap or not _complete(readings) or {r.key for r in readings} != keys:
            break
        if any(r.utilization >= threshold for r in readings):  # type: ignore[operator]
            break
        for r in readings:
            low, high = ranges.get(r.label, (r.utilization, r.utilization))
            ranges[r.label] = (min(low, r.utilization), max(high, r.utilization))  # type: ignore[type-var]
        start, later = at, at
    ordered_ranges = {r.label: ranges[r.label] for r in ordered[-1][1] if r.label in ranges}
    return start, ordered_ranges, True


def decide(
    samples: Iterable[tuple[float, tuple[GpuReading, ...]]],
    policy: IdlePolicy,
    now: float,
    *,
    max_gap: float,
    warned_at: float | None = None,
    kept_at: float | None = None,
    kernels: str = "idle",
) -> IdleDecision:
    """What to do with one server now.

    `warned_at`: when it was warned (None: not warned); `kept_at`: when its owner last
    pressed keep (the clock starts again there); `kernels`: ``idle``, ``busy`` or
    ``unknown`` (its kernels could not be read: no action, as for a busy one).
    The caller records a warning when the state is WARNED and `warned_at` was None, and
    forgets it for any state but WARNED and STOP.
    """
    start, ranges, has_data = idle_run(
        samples, policy.threshold_percent, now, max_gap, since=kept_at
    )
    if not has_data:
        return IdleDecision(NO_DATA, "no GPU metrics: nothing is decided without them")
    if not policy.enabled:
        return IdleDecision(
            OFF,
            "idle GPUs are not reclaimed for this server's owner",
            idle_since=start,
            ranges=ranges,
        )
    if start is None:
        return IdleDecision(ACTIVE, "a GPU is in use", ranges=ranges)
    idle_for = now - start
    if idle_for < policy.idle_seconds:
        return IdleDecision(
            ACTIVE,
            f"{_ranges_words(ranges)} for the last {duration_words(idle_for)}; it counts as "
            f"idle after {duration_words(policy.idle_seconds)}",
            idle_since=start,
            ranges=ranges,
        )
    if kernels == "busy":
        return IdleDecision(
            KERNEL_BUSY,
            f"{_ranges_words(ranges)} for the last {duration_words(idle_for)}, but a kernel is busy",
            idle_since=start,
            ranges=ranges,
        )
    if kernels != "idle":
        return IdleDecision(
            KERNELS_UNKNOWN,
            f"{_ranges_words(ranges)} for the last {duration_words(idle_for)}, but its kernels "
            "could not be read: nothing is decided without them",
            idle_since=start,
            ranges=ranges,
        )
    warned = now if warned_at is None else warned_at
    stop_at = warned + policy.grace_seconds
    if now >= stop_at:
        return IdleDecision(
            STOP,
            f"{_ranges_words(ranges)} for the last {duration_words(idle_for)}; "
            f"stopped at {_clock(now)} to give its GPUs back",
            idle_since=start,
            stop_at=stop_at,
            ranges=ranges,
        )
    return IdleDecision(
        WARNED,
        f"{_ranges_words(ranges)} for the last {duration_words(idle_for)}; this server "
        f"stops at {_clock(stop_at)} unless you keep it",
        idle_since=start,
        stop_at=stop_at,
        ranges=ranges,
    )
