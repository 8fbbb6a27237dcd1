"""Waiting for a GPU: what the spawn form, the spawners and the service's queue share about a
notebook server request that waits in the hub's GPU queue. Pure.

A person whose GPU model (or node) is all taken may choose to wait for it. The spawner then
registers a waiting request with the service: the server's name, the choice as
`user_options`, and the pod the choice makes reduced to what the feasibility filter reads
(`scheduling_view`). The service holds it in its queue (kind "server") and, when the
filter says it fits, starts the server through the hub's REST API with those options and
`queue_entry` set to the request's id: the spawner then checks the choice as for any start,
and labels the pod with the id so the service knows the pod is the request's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "QUEUE_ENTRY_OPTION",
    "WAIT_OPTION",
    "WAIT_PREFIX",
    "eta_text",
    "is_queue_entry_id",
    "scheduling_view",
    "wants_wait",
]

# The user_options key that asks to wait when the choice does not fit now ("1").
WAIT_OPTION = "wait"
# The user_options key the service sets when it starts a waited-for server: the request's id.
QUEUE_ENTRY_OPTION = "queue_entry"
# The form's `where` values for waiting: `wait:<placement key>` ("wait:gpu:nvidia-a100").
WAIT_PREFIX = "wait:"

_ENTRY_ID = re.compile(r"s-[0-9a-f]{12}")
_TRUE = ("1", "true", "yes", "on")


def wants_wait(options: Mapping[str, Any] | None) -> bool:
    """Whether these user_options ask to wait for the place when it is full."""
    value = (options or {}).get(WAIT_OPTION)
    return value is True or str(value).strip().lower() in _TRUE


def is_queue_entry_id(value: Any) -> bool:
    """Whether `value` is a waiting request's id as the service makes them (`s-` and 12 hex
    digits): only such a value becomes a pod label."""
    return isinstance(value, str) and _ENTRY_ID.fullmatch(value) is not None


# What the filter reads of a pod spec (thinkube_core.scheduling); nothing else is sent, so
# the admin's environment, commands and secrets stay in the hub.
_SPEC_FIELDS = ("nodeSelector", "tolerations", "nodeName", "overhead", "resources")
_CONTAINER_FIELDS = ("name", "resources", "restartPolicy")


def scheduling_view(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The pod spec reduced to what the feasibility filter and the accounting read: node
    selector, required node affinity, tolerations, node name, overhead, pod-level resources,
    and each container's and init container's resources (and restart policy, which makes an
    init container a sidecar)."""
    view: dict[str, Any] = {k: spec[k] for k in _SPEC_FIELDS if spec.get(k) is not None}
    affinity = spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = (
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        if isinstance(node_affinity, Mapping)
        else None
    )
    if required is not None:
        view["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
        }
    for kind in ("containers", "initContainers"):
        containers = spec.get(kind)
        if isinstance(containers, list):
            view[kind] = [
                {k: c[k] for k in _CONTAINER_FIELDS if c.get(k) is not None}
                if isinstance(c, Mapping)
                else c
                for c in containers
            ]
    return view


def _duration(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def eta_text(eta: float | None, now: float) -> str:
    """An estimated start for people: "in about 25 min (estimate)", "now (estimate)", or
    "unknown" when there is no basis for one."""
    if eta is None:
        return "unknown (nothing running there has an expected end)"
    if eta <= now + 30:
        return "any moment now (estimate)"
    return f"in about {_duration(eta - now)} (estimate)"
