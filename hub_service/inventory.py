"""Inventories: where availability comes from, and the answers published from it. This
module holds what every inventory shares; `cluster.KubernetesInventory` (Nodes and Pods of a
cluster) and `local.LocalInventory` (this machine) are the two kinds.
"""

from __future__ import annotations

import functools
import hashlib
import json
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
