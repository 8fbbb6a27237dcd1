"""Inventories: where availability comes from, and the answers published from it. This
module holds what every inventory shares; `cluster.KubernetesInventory` (Nodes and Pods of a
cluster) and `local.LocalInventory` (this machine) are the two kinds.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class Published:
    """The serialised answers, made once per change."""

    generated_at: str = ""
    resource_version: str = ""
    resources: bytes = b"[]"  # the node list (a plain list, the shape scripts rely on)
    nodes: dict[str, bytes] = field(default_factory=dict)
    summary: bytes = b"{}"
    node_count: int = 0
    pod_count: int = 0
    built_at: float = 0.0  # monotonic
    # The same node documents as objects (for the GPU queue), and the queue's jobs whose
    # pods they count (job id -> node).
    documents: list[dict] = field(default_factory=list)
    counted_jobs: Mapping[str, str] = field(default_factory=dict)
    # Notebook servers holding GPUs (`ClusterState.held_servers`): whose, where, since when.
    held_servers: list[dict] = field(default_factory=list)

    @functools.cached_property
    def summary_document(self) -> dict:
        return json.loads(self.summary)

    @functools.cached_property
    def resources_digest(self) -> str:
        """Changes when the node list does; made once per publication, on first use."""
        return hashlib.blake2b(self.resources, digest_size=16).hexdigest()

    @functools.cached_property
    def content_digest(self) -> str:
        """Changes when the documents do: a rebuild after an event that changed nothing we
        publish (a pod's status, a node's heartbeat) keeps it, so clients keep their copy."""
        digest = hashlib.blake2b(self.resources_digest.encode(), digest_size=16)
        digest.update(b"\0" + self.summary)
        return digest.hexdigest()


class Inventory:
    """What the HTTP layer needs from any inventory."""

    published: Published
    metrics_status: dict
    # Told after each publication (the GPU queue plans again).
    listeners: list[Callable[[], None]]

    def notify(self) -> None:
        for listener in self.listeners:
            listener()

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    def stale_since(self) -> float | None:
        """Wall-clock time since when the data may be out of date; None while fresh."""
        raise NotImplementedError

    @property
    def not_ready_reason(self) -> str | None:
        """Why the inventory is not ready, in a few words; None when it is."""
        return None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}

    def server_gpus(self) -> list[dict] | None:
        """Notebook servers holding GPUs now, each with its GPUs' utilisation as the live
        metrics give it: ``user``, ``server`` (its name, "" for the default one), ``gpus``
        (how many it holds) and ``readings`` (:class:`~hub_service.gpu_idle.GpuReading`,
        utilisation None where no metric says). None: this inventory cannot tell."""
        return None
