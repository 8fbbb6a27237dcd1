"""Idle GPUs given back: the routes.

- `GET api/v1/servers/{user}/gpu-usage` (the default server) and
  `GET api/v1/servers/{user}/{server}/gpu-usage`: the server's GPU utilisation history, the
  policy that applies to it and the decision now (with its reason in words). The owner, or a
  token with ``read:servers`` for that user (jupyterhub-idle-culler's, an admin's).
- `POST api/v1/servers/{user}[/{server}]/keep`: the owner keeps the server (the warning
  goes, the idle clock starts again). The owner, or ``delete:servers`` for that user.
- `servers/{user}[/{server}]/keep`: the same as the service page's form (hub login, _xsrf),
  back to the page.
"""

from __future__ import annotations

import time
from typing import Any

from jupyterhub.utils import url_path_join
from tornado import web

from .gpu_culler import GpuIdleCuller, ServerKey
from .handlers import JSONHandler, ServiceAuth, _quoted

__all__ = ["gpu_idle_routes"]

# user, then an optional server name; neither may hold a slash (the hub's rule too)
_SERVER = r"servers/([^/]+)(?:/([^/]+))?"


class _ServerRoute:
    service: Any
    hub_auth: Any
    current_user: Any

    @property
    def culler(self) -> GpuIdleCuller:
        culler = self.service.gpu_idle
        if culler is None or culler.rounds == 0:
            # not "holds no GPU" (404), which jupyterhub-idle-culler's hook reads as "its
            # own rule decides": right after a start nothing is known yet
            raise web.HTTPError(503, "the GPUs of servers are not sampled yet: ask again soon")
        return culler

    def allowed(self, user: str, scope: str) -> bool:
        model = self.current_user or {}
        if model.get("kind", "user") == "user" and model.get("name") == user:
            return True
        return bool(self.hub_auth.check_scopes({f"{scope}!user={user}"}, model))

    def server_key(self, user: str, server: str | None, scope: str) -> ServerKey:
        """The server, when the asker may see (or keep) it and it holds GPUs now; else 404,
        the same for a server that does not exist or that the asker may not see."""
        server = server or ""
        key = (user, server)
        if len(user) > 255 or len(server) > 255:
            raise web.HTTPError(404, f"no server {_quoted(user)} holding GPUs")
        what = f"{_quoted(user)}" + (f"/{_quoted(server)}" if server else "")
        if not self.allowed(user, scope) or self.culler.usage(key) is None:
            raise web.HTTPError(
                404,
                f"no server {what} holding GPUs now (or it is not yours to see); the usage "
                "of a server shows once it holds a GPU",
            )
        return key


class GpuUsageHandler(_ServerRoute, JSONHandler):
    def get(self, user: str, server: str | None) -> None:
        key = self.server_key(user, server, "read:servers")
        self.send_json(self.culler.usage(key))


class KeepHandler(_ServerRoute, JSONHandler):
    def post(self, user: str, server: str | None) -> None:
        key = self.server_key(user, server, "delete:servers")
        self.culler.keep(key)
        self.service.log.info(
            "%s kept server %s of %s", self.current_user.get("name"), key[1] or "(default)", user
        )
        self.send_json(self.culler.usage(key))


class KeepFormHandler(_ServerRoute, ServiceAuth, web.RequestHandler):
    """The page's Keep button. Not a streaming handler: the form's `_xsrf` field is read
    before the login cookie is accepted for a POST."""

    async def prepare(self) -> None:
        self.started = time.perf_counter()
        model = await self.ask_hub(self.hub_auth.get_user(self, sync=False))
        if not model:
            raise web.HTTPError(401, "log in through the hub first")
        if not self.hub_auth.check_scopes(self.service.access_scopes, model):
            raise web.HTTPError(403, f"{model.get('name')} may not use this service")
        self.current_user = model

    def post(self, user: str, server: str | None) -> None:
        key = self.server_key(user, server, "delete:servers")
        self.culler.keep(key)
        self.service.log.info("%s kept server %s of %s", user, key[1] or "(default)", user)
        self.redirect(self.service.service_prefix + "#gpu-servers", status=303)


def gpu_idle_routes(prefix: str) -> list[tuple]:
    api = url_path_join(prefix, "api/v1")
    return [
        (url_path_join(api, _SERVER + "/gpu-usage"), GpuUsageHandler),
        (url_path_join(api, _SERVER + "/keep"), KeepHandler),
        (url_path_join(prefix, _SERVER + "/keep"), KeepFormHandler),
    ]
