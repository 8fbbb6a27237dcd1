"""RemoteRunPodSpawner: every server is a cloud GPU pod on RunPod.

    c.JupyterHub.spawner_class = "runpod"
    c.JupyterHub.public_url = "https://hub.example.org/"   # cloud pods call the hub here
    c.RemoteRunPodSpawner.cloud_price_cap = 1.0             # USD/h; 0 means no cloud

The form lists the offers within the user's price cap (cheapest first); REST callers send
`user_options` (see options.py). At start the choice is checked against fresh offers, so a
tampered or vanished offer is refused before anything is rented. The lifecycle itself is
`RunPodBackend`'s, which ThinkubeSpawner composes too.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.spawner import Spawner
from traitlets import Integer, Unicode, default

from thinkube_core.runpod.errors import AuthError, ConfigurationError, RunPodError, UnavailableError
from thinkube_core.runpod.offers import NO_CLOUD_FOR_YOU

from ..availability import AvailabilitySettings, ServiceUnavailable
from ..errors import spawn_error
from ..labels import server_label
from .backend import CloudStartError, RunPodBackend, spawn_error_for
from .options import (
    OptionsError,
    candidate_offers,
    options_from_form,
    parse_user_options,
    render_form,
)
from .settings import JUPYTER_PORT, RunPodCloudSettings, missing_public_url_message


class RemoteRunPodSpawner(AvailabilitySettings, RunPodCloudSettings, Spawner):
    """Spawns each server on a RunPod cloud GPU (see the module docstring)."""

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        return []  # the hub's PATH and the like mean nothing in a cloud container

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 1200  # renting, pulling a large image and installing take minutes

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 300

    @default("ip")
    def _default_ip(self) -> str:
        return "0.0.0.0"

    @default("port")
    def _default_port(self) -> int:
        return JUPYTER_PORT

    @default("options_form")
    def _default_options_form(self):
        return self._cloud_options_form

    cloud_gpu_count = Integer(
        1, config=True, help="GPUs per cloud server (offers are priced for this many), e.g. `1`."
    )
    cloud_form_intro = Unicode(
        "",
        config=True,
        help="Extra HTML above the cloud offers in the form (admin-written, not escaped), "
        "e.g. `'<p>Ask #gpu on chat before renting an H100.</p>'`.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backend: RunPodBackend | None = None
        self._pending_state: dict[str, Any] = {}
        # Said as soon as a spawner exists; start() refuses with the same words.
        for problem in self.cloud_problems(self.public_hub_url):
            self.log.error(problem)

    # -- the backend ------------------------------------------------------------------

    @property
    def backend(self) -> RunPodBackend:
        if self._backend is None:
            self._backend = RunPodBackend(
                self, self.cloud_config(self.public_hub_url), type(self).__name__
            )
            self._backend.load_state(self._pending_state)
        return self._backend

    async def fetch_offers(self):
        """The offers, from one source: the availability service's cache when the hub runs
        it (no request to RunPod per form or start), else RunPod itself."""
        if self.availability_configured:
            try:
                offers = await self.availability.cloud_offers()
            except ServiceUnavailable as err:
                raise UnavailableError(str(err)) from None
            return [o for o in offers if o.gpu_count == self.cloud_gpu_count]
        async with self.backend.client() as client:
            return await client.offers(gpu_count=self.cloud_gpu_count)

    def offers_problem(self, err: RunPodError) -> str:
        """What to tell a user when the offers cannot be read (never the key)."""
        if isinstance(err, ConfigurationError):
            return "Cloud GPUs are not configured on this hub (no RunPod API key); tell the hub's admin."
        if isinstance(err, AuthError):
            return "RunPod refused the hub's API key, so no cloud server can start; tell the hub's admin."
        self.log.warning("Cloud offers for %s: %s", self.user.name, err)
        return "RunPod cannot be reached right now; try again in a moment."

    # -- form and options -------------------------------------------------------------

    async def _cloud_options_form(self, spawner: Spawner) -> str:
        cap = self.user_price_cap()
        problem, offers = "", []
        if cap > 0:
            if not self.cloud_public_url(self.public_hub_url):
                problem = "Cloud GPUs are not set up on this hub yet (no public hub URL)."
            else:
                try:
                    offers = await self.fetch_offers()
                except RunPodError as err:
                    problem = self.offers_problem(err)
        intro = self.cloud_form_intro
        return intro + render_form(offers, cap, previous=self.user_options or {}, problem=problem)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return options_from_form(formdata)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> str:
        cap = self.user_price_cap()
        try:
            request = parse_user_options(self.user_options)
            if cap <= 0:
                raise OptionsError(NO_CLOUD_FOR_YOU)
        except OptionsError as err:
            raise spawn_error(str(err), reason="invalid-choice", status_code=400) from None
        if not self.backend.config.public_hub_url:
            raise spawn_error(
                missing_public_url_message(type(self).__name__),
                reason="configuration",
                status_code=500,
            )
        try:
            offers = await self.fetch_offers()
        except RunPodError as err:
            status = 503 if isinstance(err, UnavailableError) else 500
            raise spawn_error(
                f"{self.offers_problem(err)} Nothing was started.",
                reason="runpod" if status == 503 else "configuration",
                status_code=status,
            ) from None
        try:
            tried = candidate_offers(offers, request, cap, self.cloud_offer_attempts)
        except OptionsError as err:
            self.log.info("Rejected cloud options for %s: %s", server_label(self), err)
            raise spawn_error(str(err), reason="invalid-choice", status_code=400) from None
        self.log.info(
            "Starting %s on RunPod: %s (%s), cap $%.2f/h",
            server_label(self),
            ", ".join(o.key for o in tried),
            "spot" if request.spot else "on demand",
            cap,
        )
        try:
            return await self.backend.start(tried, self.cloud_image, spot=request.spot)
        except CloudStartError as err:
            raise spawn_error_for(err) from None

    async def poll(self) -> int | None:
        return await self.backend.poll()

    async def stop(self, now: bool = False) -> None:
        await self.backend.stop()

    async def progress(self):
        async for event in self.backend.progress():
            yield event

    # -- state --------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.update(self.backend.get_state())
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        # load_state runs during construction, before every trait is settled: keep the
        # state for the backend, which is built on first use.
        self._pending_state = dict(state)
        if self._backend is not None:
            self._backend.load_state(state)

    def clear_state(self) -> None:
        super().clear_state()
        self._pending_state = {}
        if self._backend is not None:
            self._backend.clear_state()


__all__ = ["RemoteRunPodSpawner"]
