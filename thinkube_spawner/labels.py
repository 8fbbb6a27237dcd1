"""How log lines name a server: `alice`, or `alice:gpu-box` for a named server."""

from __future__ import annotations

from typing import Any


def server_label(spawner: Any) -> str:
    user = spawner.user.name
    return f"{user}:{spawner.name}" if spawner.name else user
