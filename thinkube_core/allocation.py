"""What a single-machine server was given (its CPU cores, GPUs by UUID and memory), as
ThinkubeLocalSpawner records it in its state, where only the hub writes, and the
availability service reads it back (with the `admin:server_state` scope) as that machine's
allocation. Never in `user_options`, which the user writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATE_KEY = "thinkube_allocation"


def allocation_in(state: Any) -> dict | None:
    """The allocation in a server's state, its fields checked: `cores` (ints), `gpus`
    (UUID strings), `memory_gib` (a number), `memory_enforced`; None when there is none."""
    held = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if not isinstance(held, Mapping):
        return None
    cores, gpus = held.get("cores"), held.get("gpus")
    memory = held.get("memory_gib")
    return {
        "cores": [c for c in cores if isinstance(c, int) and not isinstance(c, bool) and c >= 0]
        if isinstance(cores, list)
        else [],
        "gpus": [g for g in gpus if isinstance(g, str)] if isinstance(gpus, list) else [],
        "memory_gib": memory if isinstance(memory, int | float) and memory > 0 else 0,
        "memory_enforced": held.get("memory_enforced") is True,
    }
