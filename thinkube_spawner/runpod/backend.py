"""One cloud server's lifecycle on RunPod, composed by a spawner.

    backend = RunPodBackend(spawner, spawner.cloud_config(spawner.public_hub_url))
    url = await backend.start(offers, image, spot=False)   # in Spawner.start
    await backend.poll(); await backend.stop()              # in Spawner.poll / stop
    async for event in backend.progress(): ...              # in Spawner.progress
    state = backend.get_state(); backend.load_state(state)  # in get_state / load_state

The owning spawner gives the user, the server name, `get_env()` (the hub API token and
URLs) and its log; nothing here assumes which Spawner class that is. A pod is rented from
the first offer with capacity (RunPod's `podFindAndDeployOnDemand`, or
`podRentInterruptable` at the offer's minimum bid for spot), runs `jupyterhub-singleuser`
on port 8888 with the spawner's environment (hub URLs made public), carries a
`terminateAfter` dead-man switch, and is reached through RunPod's HTTP proxy. Whatever
goes wrong after the pod exists (a timeout, an error, a cancelled start) terminates it
before the error is raised. The pod id is kept in the spawner's state under
`runpod_pod_id`, which the hub service's reaper also reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from thinkube_core.runpod.client import PodWaitTimeout, RunPodClient
from thinkube_core.runpod.errors import (
    AuthError,
    CapacityError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    RunPodError,
    UnavailableError,
)
from thinkube_core.runpod.models import ENDED_STATUSES, PAUSED, STATE_POD_ID, Pod, PodRequest
from thinkube_core.runpod.offers import Offer

from ..labels import server_label
from .settings import (
    JUPYTER_PORT,
    CloudConfig,
    missing_public_url_message,
    origin_of,
    pod_env,
    pod_name,
    singleuser_docker_args,
)

TERMINATE_TIMEOUT_S = 60.0


class CloudStartError(RunPodError):
    """A start that failed; the message is for the user (no secrets), `reason` and
    `status_code` are what JupyterHub's SpawnException takes."""

    def __init__(self, message: str, *, reason: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.reason = reason
        self.status_code = status_code


class RunPodBackend:
    """See the module docstring."""

    def __init__(self, spawner: Any, config: CloudConfig, settings_class: str = "") -> None:
        self.spawner = spawner
        self.config = config
        self.settings_class = settings_class or type(spawner).__name__
        self.pod_id: str | None = None
        self.offer_key: str | None = None
        self.cost_per_hr: float | None = None
        # The pod could not be terminated at stop: keep its id in the state, so that the
        # next start (or the reaper) ends it.
        self.needs_terminate = False
        self._events: list[dict[str, Any]] = []
        self._starting = False
        self._changed: asyncio.Event | None = None

    @property
    def log(self):
        return self.spawner.log

    def client(self) -> RunPodClient:
        if self.config.api_key is None:
            raise ConfigurationError(
                "Cloud GPUs are not configured on this hub (no RunPod API key)."
            )
        return RunPodClient(
            self.config.api_key,
            api_url=self.config.api_url,
            proxy_url_template=self.config.proxy_url_template,
            poll_interval_s=self.config.poll_interval_s,
            environ={},
            runpod_config=None,
        )

    # -- state -----------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        if not self.pod_id:
            return {}
        state: dict[str, Any] = {STATE_POD_ID: self.pod_id}
        if self.offer_key:
            state["runpod_offer"] = self.offer_key
        if self.cost_per_hr is not None:
            state["runpod_cost_per_hr"] = self.cost_per_hr
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.pod_id = state.get(STATE_POD_ID) or None
        self.offer_key = state.get("runpod_offer")
        self.cost_per_hr = state.get("runpod_cost_per_hr")

    def clear_state(self) -> None:
        if self.needs_terminate:
            return
        self.pod_id = None
        self.offer_key = None
        self.cost_per_hr = None

    # -- progress --------------------------------------------------------------------

    def _emit(self, progress: int, message: str) -> None:
        self._events.append({"progress": progress, "message": message})
        self.log.info("%s: %s", server_label(self.spawner), message)
        if self._changed is not None:
            self._changed.set()

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Each offer tried, the pod created, waiting for the container, Jupyter
        answering: as they happen, until the start ends."""
        if self._changed is None:
            self._changed = asyncio.Event()
        index = 0
        while True:
            if index < len(self._events):
                yield self._events[index]
                index += 1
                continue
            if not (self._starting or self.spawner.pending == "spawn"):
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    # -- start -----------------------------------------------------------------------

    def pod_request(self, offer: Offer, image: str, env: dict[str, str]) -> PodRequest:
        spawner = self.spawner
        server = spawner.name or ""
        meta = {
            **self.config.extra_meta,
            "hub": self.config.name_prefix,
            "user": spawner.user.name,
            "server": server,
        }
        return PodRequest(
            name=pod_name(self.config.name_prefix, spawner.user.name, server),
            image_name=image,
            gpu_type_id=offer.gpu_type_id,
            gpu_count=offer.gpu_count,
            cloud_type=offer.cloud_type,
            docker_args=singleuser_docker_args(
                self.config.jupyterhub_version,
                JUPYTER_PORT,
                allow_origin=origin_of(self.config.public_hub_url),
            ),
            env=env,
            meta=meta,
            ports=f"{JUPYTER_PORT}/http",
            container_disk_in_gb=self.config.container_disk_gb,
            terminate_after=datetime.now(UTC) + timedelta(hours=self.config.max_lifetime_hours),
        )

    def server_base_url(self) -> str:
        server = getattr(self.spawner, "server", None)
        return server.base_url if server is not None else "/"

    async def start(self, offers: Sequence[Offer], image: str | None = None, spot: bool = False):
        """Rent a pod from the first of `offers` with capacity, wait until Jupyter answers
        through RunPod's proxy, and return that URL. CloudStartError on failure, with no
        pod left behind."""
        if not self.config.public_hub_url:
            raise CloudStartError(
                missing_public_url_message(self.settings_class), reason="configuration"
            )
        if not offers:
            raise CloudStartError("No cloud GPU offer to try.", reason="no-offer", status_code=400)
        self._events = []
        self._starting = True
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            return await self._start(list(offers), image or self.config.image, spot)
        finally:
            self._starting = False
            self._changed.set()

    async def _start(self, offers: list[Offer], image: str, spot: bool) -> str:
        deadline = time.monotonic() + self.config.start_timeout_s
        try:
            client = self.client()
        except ConfigurationError as err:
            raise CloudStartError(str(err), reason="configuration") from None
        async with client:
            if self.pod_id:
                # A pod the last stop could not end: end it before renting another.
                await self._terminate(client, self.pod_id, "left over from the last stop")
            env = pod_env(
                self.spawner.get_env(),
                public_hub_url=self.config.public_hub_url,
                server_base_url=self.server_base_url(),
            )
            kind = "spot" if spot else "on demand"
            tried: list[Offer] = []

            def on_try(offer: Offer) -> None:
                tried.append(offer)
                price = offer.price(spot)
                self._emit(
                    5 + 5 * len(tried),
                    f"Asking RunPod for {offer.display_name} ({offer.cloud_type.lower()} cloud, "
                    f"${price:.2f}/h {kind})",
                )

            def on_capacity(offer: Offer, _err: CapacityError) -> None:
                self._emit(5 + 5 * len(tried), f"RunPod has no {offer.display_name} free right now")

            try:
                pod, offer = await client.create_first_available(
                    offers,
                    lambda o: self.pod_request(o, image, env),
                    spot=spot,
                    attempts=self.config.offer_attempts,
                    on_try=on_try,
                    on_capacity=on_capacity,
                )
            except CapacityError:
                names = ", ".join(f"{o.display_name} ({o.cloud_type.lower()})" for o in tried)
                raise CloudStartError(
                    f"RunPod has no capacity for the offers tried ({names}). Nothing was "
                    "started; try again later or choose another GPU.",
                    reason="capacity",
                    status_code=409,
                ) from None
            except AuthError:
                raise CloudStartError(
                    "RunPod refused the hub's API key, so no cloud server was started. "
                    "Tell the hub's admin.",
                    reason="configuration",
                ) from None
            except InvalidRequestError as err:
                raise CloudStartError(
                    f"RunPod refused the request: {err}. Nothing was started.",
                    reason="invalid-request",
                ) from None
            except RunPodError as err:
                raise CloudStartError(
                    f"RunPod failed: {err}. Nothing was started; try again in a moment.",
                    reason="runpod",
                    status_code=503,
                ) from None
            self.pod_id, self.offer_key, self.cost_per_hr = pod.id, offer.key, pod.cost_per_hr
            self.needs_terminate = False
            cost = f", ${pod.cost_per_hr:.2f}/h" if pod.cost_per_hr is not None else ""
            self._emit(40, f"Pod {pod.id} created: {offer.display_name}{cost}")
            try:
                url = await self._wait_until_answering(client, pod, deadline)
            except BaseException as err:
                # The pod exists and costs money: end it whatever went wrong, even when
                # this start is being cancelled (JupyterHub's start_timeout, a user who
                # gave up), then say why.
                pod_id = self.pod_id
                ending = asyncio.ensure_future(self._terminate_now(pod_id))
                with contextlib.suppress(BaseException):
                    await asyncio.shield(ending)
                if isinstance(err, asyncio.CancelledError | KeyboardInterrupt):
                    raise
                raise self._start_failure(err, pod_id) from None
        self._emit(100, "Jupyter is answering")
        return url

    async def _wait_until_answering(self, client: RunPodClient, pod: Pod, deadline: float) -> str:
        said = False

        def on_poll(current: Pod) -> None:
            nonlocal said
            if not current.is_running and not said:
                said = True
                self._emit(50, "Waiting for RunPod to start the container")

        pod = await client.wait_for_pod(
            pod.id,
            port=JUPYTER_PORT,
            timeout_s=max(1.0, deadline - time.monotonic()),
            on_poll=on_poll,
        )
        url = client.proxy_url(pod, JUPYTER_PORT)
        if not url:
            raise RunPodError(
                "the pod's port 8888 has no URL (check the proxy URL template setting)"
            )
        self._emit(70, "Container running; waiting for Jupyter to answer")
        await client.wait_for_http(
            f"{url}{self.server_base_url()}api",
            timeout_s=max(1.0, deadline - time.monotonic()),
            interval_s=min(2.0, self.config.poll_interval_s),
            pod_id=pod.id,
        )
        return url

    def _start_failure(self, err: BaseException, pod_id: str | None) -> CloudStartError:
        ended = (
            f"pod {pod_id} was terminated"
            if not self.needs_terminate
            else (
                f"terminating pod {pod_id} failed; it ends by itself within "
                f"{self.config.max_lifetime_hours:g} h"
            )
        )
        if isinstance(err, PodWaitTimeout):
            return CloudStartError(
                f"The cloud server did not start within {self.config.start_timeout_s:.0f}s "
                f"({err}); the {ended}.",
                reason="timeout",
                status_code=504,
            )
        if isinstance(err, RunPodError):
            return CloudStartError(
                f"The cloud server failed to start: {err}; the {ended}.", reason="runpod"
            )
        self.log.error("%s: cloud start failed", server_label(self.spawner), exc_info=err)
        return CloudStartError(
            f"The cloud server failed to start ({type(err).__name__}); the {ended}.",
            reason="error",
        )

    async def _terminate_now(self, pod_id: str | None) -> None:
        if not pod_id:
            return
        try:
            async with self.client() as client:
                await self._terminate(client, pod_id, "after a failed start")
        except ConfigurationError:
            self.needs_terminate = True

    async def _terminate(self, client: RunPodClient, pod_id: str, why: str) -> None:
        try:
            await asyncio.wait_for(client.terminate_pod(pod_id), TERMINATE_TIMEOUT_S)
        except (RunPodError, TimeoutError) as err:
            self.needs_terminate = True
            self.log.error(
                "%s: could not terminate RunPod pod %s (%s): %s; the hub service's reaper or "
                "its terminateAfter will end it",
                server_label(self.spawner),
                pod_id,
                why,
                err,
            )
            return
        self.log.info("%s: RunPod pod %s terminated (%s)", server_label(self.spawner), pod_id, why)
        self.needs_terminate = False
        if self.pod_id == pod_id:
            self.pod_id = None

    # -- poll and stop ---------------------------------------------------------------

    async def poll(self) -> int | None:
        """None while the pod runs (or is starting); an exit status once it is gone or
        ended. When RunPod cannot be asked, the server is assumed to be still there."""
        if not self.pod_id:
            return 0
        try:
            async with self.client() as client:
                pod = await client.get_pod(self.pod_id)
        except NotFoundError:
            pod = None
        except (UnavailableError, AuthError, ConfigurationError, RunPodError) as err:
            self.log.warning(
                "%s: cannot ask RunPod about pod %s (%s); assuming it still runs",
                server_label(self.spawner),
                self.pod_id,
                err,
            )
            return None
        if pod is None:
            return 0
        if pod.desired_status in ENDED_STATUSES or pod.desired_status == PAUSED:
            # The server is gone (its process exited, a spot pod was taken back).
            # JupyterHub will not call stop() for a server that poll() says is gone, and a
            # stopped pod still costs: end it now.
            self.log.info(
                "%s: RunPod pod %s is %s; its server is gone",
                server_label(self.spawner),
                self.pod_id,
                pod.desired_status,
            )
            await self.stop()
            return 1
        return None

    async def stop(self) -> None:
        """Terminate the pod (done when RunPod no longer has it)."""
        if not self.pod_id:
            return
        try:
            client = self.client()
        except ConfigurationError as err:
            self.needs_terminate = True
            self.log.error(
                "%s: cannot stop pod %s: %s", server_label(self.spawner), self.pod_id, err
            )
            return
        async with client:
            await self._terminate(client, self.pod_id, "server stopped")


def spawn_error_for(err: CloudStartError):
    """The error JupyterHub shows the user for a failed cloud start (5.5 and 6)."""
    from ..errors import spawn_error

    return spawn_error(str(err), reason=err.reason, status_code=err.status_code)


__all__ = ["CloudStartError", "RunPodBackend", "spawn_error_for"]
