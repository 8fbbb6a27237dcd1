"""A start that waits in Kueue's queue: how long it may wait, and what the person is told.
Pure.

With a LocalQueue for notebook servers (`ThinkubeSpawner.kueue_local_queue`), the server's
pod is held back by Kueue's scheduling gate until the queue's quota admits it. That wait is
not a failure: the start's own timeout (`start_timeout`) counts only the time the pod is
not gated, and the time gated is limited on its own (`kueue_max_wait_seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .choice import Choice

QUEUE_TOO_LONG, TIMED_OUT = "queue", "timeout"


@dataclass
class GateClock:
    """The time a start has spent gated and not gated. `observe` it as often as the pod is
    looked at; `verdict` says whether either limit is past."""

    start_timeout: float
    max_wait: float
    started: float
    gated_total: float = 0.0
    gated_since: float | None = None

    def observe(self, now: float, gated: bool) -> None:
        if gated and self.gated_since is None:
            self.gated_since = now
        elif not gated and self.gated_since is not None:
            self.gated_total += now - self.gated_since
            self.gated_since = None

    def gated_for(self, now: float) -> float:
        return self.gated_total + (now - self.gated_since if self.gated_since is not None else 0)

    def verdict(self, now: float) -> str | None:
        """QUEUE_TOO_LONG when the pod has been gated longer than `max_wait` in all,
        TIMED_OUT when the rest of the start took longer than `start_timeout`, else None."""
        gated = self.gated_for(now)
        if gated > self.max_wait:
            return QUEUE_TOO_LONG
        if now - self.started - gated > self.start_timeout:
            return TIMED_OUT
        return None


def _what(choice: Choice | None) -> str:
    if choice is None or not choice.gpus:
        return "room"
    model = f" {choice.placement.gpu_model}" if choice.placement.gpu_model else ""
    return f"{choice.gpus}{model} GPU{'s' if choice.gpus != 1 else ''}"


def queue_message(position: int | None, queue: str, choice: Choice | None) -> str:
    """The progress line of a gated start: its place in the queue when Kueue says it."""
    if position is None:
        return f"Queued in {queue!r} for {_what(choice)}: waiting for the queue to admit it."
    ahead = position - 1
    before = (
        "next in line"
        if ahead == 0
        else f"{ahead} request{'s' if ahead != 1 else ''} ahead of yours"
    )
    return f"Queued in {queue!r} for {_what(choice)}: number {position} in line ({before})."


def queue_too_long_message(max_wait: float, queue: str) -> str:
    if max_wait < 120:
        span = f"{max_wait:g} seconds"
    elif max_wait < 2 * 3600:
        span = f"{max_wait / 60:g} minutes"
    else:
        span = f"{max_wait / 3600:g} hours"
    return (
        f"Your server waited {span} in the queue {queue!r} and was not admitted; it was "
        "removed from the queue and nothing is running. Try again later."
    )


def timed_out_message(start_timeout: float) -> str:
    return (
        f"Your server did not start within {start_timeout:g} seconds of leaving the queue; "
        "nothing is running. Try again in a moment."
    )
