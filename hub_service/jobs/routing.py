"""One JobBackend over two: this hub's own (processes here, or Kubernetes Jobs) and RunPod
pods, each job sent to the backend of its placement (see placement.py).

The queue sees one backend. Jobs placed on RunPod are `elsewhere`: the planner never places
them on this hub's nodes and never places a local job on RunPod. What the queue asks of
the backend as a whole (Kueue's admission and positions, the deadline grace of local jobs)
is the local backend's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from .placement import RUNPOD
from .spec import JobRequest

__all__ = ["RoutedJobs", "placed_on_runpod"]


class CloudNotConfigured(RuntimeError):
    """A RunPod job, on a service that has no RunPod set up (any more)."""


def placed_on_runpod(entry: Mapping[str, Any]) -> bool:
    placement = (entry.get("request") or {}).get("placement") or {}
    return placement.get("kind") == RUNPOD


class RoutedJobs:
    """`local` runs what the planner places; `runpod` (None: not set up) what is placed on
    RunPod."""

    def __init__(self, local: Any, runpod: Any | None = None) -> None:
        self.local = local
        self.runpod = runpod
        self.name = local.name if runpod is None else f"{local.name} and {runpod.name}"

    def _for(self, entry: Mapping[str, Any]) -> Any:
        if not placed_on_runpod(entry):
            return self.local
        if self.runpod is None:
            raise CloudNotConfigured(
                "RunPod is not set up on this service (no API key, or no public URL for pods)"
            )
        return self.runpod

    # -- what the queue asks of the whole --------------------------------------------------

    @property
    def runs_cloud_jobs(self) -> bool:
        """Whether jobs placed on a cloud offer run here (RunPod is set up)."""
        return self.runpod is not None

    @property
    def admits(self) -> bool:
        return bool(getattr(self.local, "admits", False))

    @property
    def streams(self) -> str:
        return getattr(self.local, "streams", "separate")

    def streams_for(self, entry: Mapping[str, Any]) -> str:
        """Whether this job's stdout and stderr are `separate` or `combined`."""
        backend = self.runpod if placed_on_runpod(entry) and self.runpod else self.local
        return getattr(backend, "streams", "separate")

    def positions(self) -> dict[str, int]:
        positions = getattr(self.local, "positions", None)
        return positions() if positions is not None else {}

    def elsewhere(self, entry: Mapping[str, Any]) -> str | None:
        return RUNPOD if placed_on_runpod(entry) else None

    def deadline_grace(self, entry: Mapping[str, Any]) -> float:
        backend = self.runpod if placed_on_runpod(entry) and self.runpod else self.local
        return float(getattr(backend, "deadline_grace_s", 0.0) or 0.0)

    async def recover(self) -> list[dict[str, Any]]:
        if self.runpod is not None:
            self.runpod.sweep_soon()  # pods of jobs the store no longer runs are ended
        recover = getattr(self.local, "recover", None)
        return list(await recover()) if recover is not None else []

    # -- per job -------------------------------------------------------------------------

    async def start(self, entry: Mapping[str, Any], request: JobRequest, node: str | None) -> dict:
        return await self._for(entry).start(entry, request, node)

    async def stop(self, entry: Mapping[str, Any], reason: str) -> Mapping[str, Any] | None:
        if placed_on_runpod(entry) and self.runpod is None:
            return None
        return await self._for(entry).stop(entry, reason)

    async def reattach(self, entry: Mapping[str, Any]) -> bool:
        if placed_on_runpod(entry) and self.runpod is None:
            return False
        return await self._for(entry).reattach(entry)

    async def logs(
        self, entry: Mapping[str, Any], after: str | None, follow: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        if placed_on_runpod(entry) and self.runpod is None:
            return
        async for item in self._for(entry).logs(entry, after, follow):
            yield item

    def artifacts_dir(self, entry: Mapping[str, Any]) -> Path | None:
        """Where the job's artifacts are kept on this machine, as its backend says (None:
        that backend keeps none)."""
        if placed_on_runpod(entry):
            return self.runpod.artifacts_dir(entry) if self.runpod is not None else None
        artifacts_dir = getattr(self.local, "artifacts_dir", None)
        return artifacts_dir(entry) if artifacts_dir is not None else None

    async def close(self) -> None:
        try:
            if self.runpod is not None:
                await self.runpod.close()
        finally:
            await self.local.close()
