"""A cull_arbiter_hook for jupyterhub-idle-culler (2.0 and later) that leaves notebook
servers holding GPUs to thinkube-resources' idle-GPU policy, so the culler people already
run and the service make the same decisions.

jupyterhub-idle-culler calls ``cull_arbiter_hook(inactive=, inactive_limit=, server=)`` for
each ready server (awaiting it when it is a coroutine) and culls when it returns True. This
hook asks the service ``GET api/v1/servers/{user}[/{server}]/gpu-usage`` with the culler's
own token (``JUPYTERHUB_API_TOKEN``; its role needs ``access:services!service=thinkube-resources``
besides the culler's usual scopes):

- the server holds GPUs and the service says ``stop`` (idle past the grace period): cull;
- it holds GPUs and the policy is off for its owner: the culler's own rule (inactivity);
- it holds GPUs in any other state (in use, warned, no GPU metrics, kernels busy or unknown):
  never culled, whatever its HTTP inactivity;
- it holds no GPU (the service answers 404): the culler's own rule;
- the service cannot be asked: not culled (a missing answer is never read as idle).

Run the service with ``gpu_idle_stopped_by = 'jupyterhub-idle-culler'`` so that only the
culler stops servers (the service still samples and warns). Config (docs/culling.md)::

    from thinkube_core.idle_culler_hook import make_gpu_cull_arbiter
    c.IdleCuller.cull_arbiter_hook = make_gpu_cull_arbiter(
        "http://hub:8181/services/thinkube-resources/"
    )
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx

__all__ = ["gpu_cull_arbiter", "make_gpu_cull_arbiter", "server_owner"]

# A child of jupyterhub-idle-culler's application logger: the hook's lines go where the
# culler's own go, in its format.
log = logging.getLogger("IdleCuller.thinkube_gpu")

Arbiter = Callable[..., Awaitable[bool]]


def server_owner(server: Mapping[str, Any]) -> str | None:
    """The owner's name from a hub server model (the culler's models have no user field):
    its ``url`` is ``{base_url}user/{name}/`` or ``{base_url}user/{name}/{server}/``."""
    url = server.get("url")
    if not isinstance(url, str) or not url:
        return None
    parts = urlparse(url).path.rstrip("/").split("/")
    name = server.get("name") or ""
    if name:
        if len(parts) < 3 or unquote(parts[-1]) != name:
            return None
        parts = parts[:-1]
    if len(parts) < 2 or parts[-2] != "user" or not parts[-1]:
        return None
    return unquote(parts[-1])


def _inactive_rule(inactive: timedelta | None, inactive_limit: float) -> bool:
    """jupyterhub-idle-culler's own rule (its default arbiter)."""
    return inactive is not None and inactive.total_seconds() >= inactive_limit


def make_gpu_cull_arbiter(
    service_url: str, token: str | None = None, timeout_s: float = 10.0
) -> Arbiter:
    """The hook for a service at `service_url` (where the culler reaches it, ending in the
    service's prefix), with `token` (default: the culler's ``JUPYTERHUB_API_TOKEN``)."""
    base = service_url.rstrip("/") + "/"

    async def gpu_cull_arbiter(
        *, inactive: timedelta | None, inactive_limit: float, server: Mapping[str, Any], **_: Any
    ) -> bool:
        user = server_owner(server)
        name = server.get("name") or ""
        if user is None:
            log.warning(
                "thinkube GPU hook: no owner in the server's URL %r: not culled", server.get("url")
            )
            return False
        path = "/".join(quote(part, safe="") for part in (user, name) if part)
        key = token if token is not None else os.environ.get("JUPYTERHUB_API_TOKEN", "")
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                response = await client.get(
                    f"{base}api/v1/servers/{path}/gpu-usage",
                    headers={"Authorization": f"token {key}"},
                )
        except httpx.HTTPError as err:
            log.warning(
                "thinkube GPU hook: the service could not be asked about %s (%s): not culled",
                path,
                type(err).__name__,
            )
            return False
        if response.status_code == 404:
            return _inactive_rule(inactive, inactive_limit)  # it holds no GPU
        try:
            decision = response.json()["decision"] if response.status_code == 200 else None
            state = decision["state"] if isinstance(decision, Mapping) else None
        except (ValueError, KeyError, TypeError):
            state = None
        if state is None:
            log.warning(
                "thinkube GPU hook: the service answered HTTP %d about %s: not culled",
                response.status_code,
                path,
            )
            return False
        if state == "off":
            return _inactive_rule(inactive, inactive_limit)
        if state == "stop":
            log.info("thinkube GPU hook: culling %s: %s", path, decision.get("reason"))
            return True
        return False

    return gpu_cull_arbiter


def gpu_cull_arbiter(**kwargs: Any) -> Awaitable[bool]:
    """The hook with the service's URL from ``THINKUBE_RESOURCES_URL`` (for a config that
    cannot call :func:`make_gpu_cull_arbiter`)."""
    url = os.environ.get("THINKUBE_RESOURCES_URL", "")
    if not url:
        raise RuntimeError(
            "set THINKUBE_RESOURCES_URL to the service's URL, e.g. "
            "http://hub:8181/services/thinkube-resources/"
        )
    return make_gpu_cull_arbiter(url)(**kwargs)
