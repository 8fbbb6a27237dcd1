"""Whether the shared claims a server mounts can be mounted, read from the Kubernetes API.

A claim that does not exist, is Lost, or is Pending with nothing to bind it will never let a
pod start: the spawn form says so and a start is refused before any pod is created. A claim
of a WaitForFirstConsumer class is Pending until the first pod using it is scheduled, which
may be this one: that is fine. When this hub may not read a claim or its class (RBAC), the
answer is "unknown" and nothing is refused: the scheduler's own message then fails the spawn
fast. Answers are kept a few seconds and shared by the hub's spawners, so a form render does
not read every claim again."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes_asyncio.client import StorageV1Api

MISSING, UNKNOWN, MOUNTABLE = "missing", "unknown", "mountable"


class ClaimStates:
    KEEP_SECONDS = 10.0

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], tuple[float, str]] = {}

    async def state(self, spawner: Any, name: str, fresh: bool) -> str:
        """MOUNTABLE, MISSING, UNKNOWN, or why the claim cannot bind, in words."""
        key = (spawner.namespace, name)
        held = self._states.get(key)
        if not fresh and held and time.monotonic() - held[0] < self.KEEP_SECONDS:
            return held[1]
        state = await self._read(spawner, name)
        self._states[key] = (time.monotonic(), state)
        return state

    async def _read(self, spawner: Any, name: str) -> str:
        claim = await _get(
            spawner, spawner.api.read_namespaced_persistent_volume_claim, name, spawner.namespace
        )
        if not isinstance(claim, dict):
            return claim
        phase = (claim.get("status") or {}).get("phase")
        if phase in (None, "Bound"):
            return MOUNTABLE if phase else UNKNOWN
        if phase != "Pending":
            return f"{phase}, not Bound"
        storage_class = (claim.get("spec") or {}).get("storageClassName")
        if not storage_class:
            return "Pending, with no storage class to provision it"
        found = await _get(
            spawner, StorageV1Api(spawner.api.api_client).read_storage_class, storage_class
        )
        if found == MISSING:
            return f"Pending: its storage class {storage_class!r} does not exist"
        if not isinstance(found, dict):
            return UNKNOWN
        if found.get("volumeBindingMode") == "WaitForFirstConsumer":
            return MOUNTABLE
        return "Pending, not Bound"


async def _get(spawner: Any, read, *args) -> dict | str:
    """The object as raw JSON, MISSING, or UNKNOWN when it cannot be read."""
    try:
        # Unparsed: the raw response, whose status is ours to check.
        response = await read(*args, _preload_content=False)
        if response.status == 404:
            return MISSING
        if response.status != 200:
            spawner.log.warning("Cannot read %s: HTTP %s", args[0], response.status)
            return UNKNOWN
        found = json.loads(await response.read())
        return found if isinstance(found, dict) else UNKNOWN
    except Exception as err:  # the API unreachable, or not JSON: the scheduler will tell
        spawner.log.warning("Cannot read %s: %s", args[0], type(err).__name__)
    return UNKNOWN


async def storage_problems(spawner: Any, shared_volumes: list[dict], fresh: bool) -> list[str]:
    """Why the configured shared claims cannot be mounted, in words; empty when they can."""
    problems = []
    for volume in shared_volumes:
        name = str(volume.get("claim") or "")
        state = await CLAIMS.state(spawner, name, fresh)
        if state == MISSING:
            problems.append(
                f"The shared storage claim {name!r} does not exist in namespace "
                f"{spawner.namespace!r}."
            )
        elif state not in (MOUNTABLE, UNKNOWN):
            problems.append(f"The shared storage claim {name!r} is {state}: nothing can mount it.")
    return problems


CLAIMS = ClaimStates()
