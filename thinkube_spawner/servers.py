"""Where one ThinkubeSpawner server runs, and its lifecycle there.

ThinkubeSpawner picks one of these per start (from the checked choice) or from the state it
restored, and hands every lifecycle call to it: `start`, `poll`, `stop`, `progress`,
`get_state`, `load_state`, `clear_state`. Nothing else in the spawner branches on where a
server runs.

- `KubernetesServer`: kubespawner's own lifecycle (called as KubeSpawner's public methods),
  plus what thinkube adds: an error answer of the Kubernetes API said in words, and
  fail-fast, which ends a start the scheduler keeps refusing with its reason instead of
  waiting out `start_timeout`; progress from kubespawner's own event stream, in our words.
  With a Kueue LocalQueue for servers, a pod Kueue holds back (its scheduling gate) is
  queued, not stuck: neither fail-fast nor `start_timeout` counts that wait, which has its
  own limit, and the progress says the pod's place in the queue.
- `CloudServer`: a RunPod pod, rented from the chosen offer (or the same GPU in RunPod's
  other cloud) through `RunPodBackend`, the backend RemoteRunPodSpawner uses too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from jupyterhub.spawner import Spawner
from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner import KubeSpawner

from thinkube_core.kueue import (
    VISIBILITY_VERSIONS,
    is_admission_gated,
    pending_workloads_path,
    positions_by_owner,
)
from thinkube_core.runpod.models import STATE_POD_ID

from .errors import spawn_error
from .form import progress_message
from .kueue_wait import (
    QUEUE_TOO_LONG,
    TIMED_OUT,
    GateClock,
    queue_message,
    queue_too_long_message,
    timed_out_message,
)
from .labels import server_label
from .runpod.backend import CloudStartError, RunPodBackend, spawn_error_for

if TYPE_CHECKING:
    from .spawner import ThinkubeSpawner

# Scheduler reasons that waiting will not fix (short of a node being added).
UNSCHEDULABLE_MARKERS = (
    "Insufficient ",
    "didn't match Pod's node affinity/selector",
    "had untolerated taint",
    "Too many pods",
    "persistentvolumeclaim ",  # ... "x" not found
    "unbound immediate PersistentVolumeClaims",
)
# Kubelet events that waiting will not fix either: a volume that cannot be found.
MOUNT_FAILURE_MARKERS = ("not found",)


class Server(Protocol):
    def start(self) -> Awaitable[Any]: ...
    async def poll(self) -> int | None: ...
    async def stop(self, now: bool = False) -> None: ...
    def progress(self) -> AsyncIterator[dict]: ...
    def get_state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...
    def clear_state(self) -> None: ...


def is_lasting_failure(event: dict) -> bool:
    """A scheduler or kubelet event that waiting will not fix."""
    message = event.get("message") or ""
    if event.get("reason") == "FailedScheduling":
        return any(marker in message for marker in UNSCHEDULABLE_MARKERS)
    if event.get("reason") == "FailedMount":
        return any(marker in message for marker in MOUNT_FAILURE_MARKERS)
    return False


class KubernetesServer:
    """A pod on the lab's cluster, started and watched by kubespawner."""

    def __init__(self, spawner: ThinkubeSpawner) -> None:
        self.spawner = spawner
        # The visibility API's versions still to try; the one that answered, once known.
        self._visibility_versions: tuple[str, ...] = VISIBILITY_VERSIONS

    def start(self) -> Awaitable[Any]:
        spawner = self.spawner
        if spawner.kueue_local_queue:
            # JupyterHub reads start_timeout once, right after start() returns: the wait in
            # the queue gets its own limit on top of it, and the queue's watcher holds the
            # start to each (restored when the start ends).
            spawner.start_timeout = (
                spawner.configured_start_timeout + spawner.kueue_max_wait_seconds
            )
        return asyncio.ensure_future(self._start())

    async def prepare(self):
        """The checked choice, for kubespawner's start to shape the pod from."""
        spawner = self.spawner
        choice = await spawner.choice_for_this_start()
        if choice.cloud:
            raise spawn_error(
                "A cloud GPU cannot be started as a Kubernetes pod.", reason="invalid-choice"
            )
        spawner.thinkube_choice = choice
        # The menu's own values (a REST call may send 4 for "4").
        spawner.user_options = choice.as_user_options()
        return choice

    async def _start(self):
        spawner = self.spawner
        try:
            await self.prepare()
            # kubespawner's start calls our load_user_options, which shapes the pod from the
            # choice, and our get_pod_manifest, which checks the pod it made.
            started = KubeSpawner.start(spawner)
            watchers = []
            if spawner.fail_fast_seconds:
                watchers.append(asyncio.ensure_future(self._fail_fast()))
            if spawner.kueue_local_queue:
                watchers.append(asyncio.ensure_future(self._watch_queue()))
            if not watchers:
                return await self._refusals_in_words(started)
            try:
                done, _ = await asyncio.wait(
                    {started, *watchers}, return_when=asyncio.FIRST_COMPLETED
                )
                if started in done:
                    return await self._refusals_in_words(started)
                failure = next(w for w in watchers if w in done).result()
            finally:
                for watcher in watchers:
                    watcher.cancel()
            started.cancel()
            await asyncio.gather(started, return_exceptions=True)
            await self.stop(now=True)
            raise failure
        finally:
            if spawner.kueue_local_queue:
                spawner.start_timeout = spawner.configured_start_timeout

    def _pod(self) -> dict | None:
        spawner = self.spawner
        reflector = spawner.pod_reflector
        return reflector.pods.get(f"{spawner.namespace}/{spawner.pod_name}") if reflector else None

    async def _fail_fast(self) -> Exception:
        failure = await self._watch_scheduling()
        error = spawn_error(
            await self.spawner.unschedulable_message(failure),
            reason="unschedulable",
            status_code=503,
        )
        await self.spawner.offer_cloud_instead_now(error)
        return error

    async def _watch_queue(self) -> Exception:
        """The error that ends a start once its pod has been held in Kueue's queue longer
        than kueue_max_wait_seconds, or the rest of the start took longer than
        start_timeout."""
        spawner = self.spawner
        clock = GateClock(
            spawner.configured_start_timeout, spawner.kueue_max_wait_seconds, time.monotonic()
        )
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            clock.observe(now, is_admission_gated(self._pod()))
            verdict = clock.verdict(now)
            if verdict == QUEUE_TOO_LONG:
                spawner.log.warning(
                    "%s waited %ds in the queue %s; giving up",
                    server_label(spawner),
                    spawner.kueue_max_wait_seconds,
                    spawner.kueue_local_queue,
                )
                error = spawn_error(
                    queue_too_long_message(
                        spawner.kueue_max_wait_seconds, spawner.kueue_local_queue
                    ),
                    reason="queue",
                    status_code=503,
                )
                await spawner.offer_cloud_instead_now(error)
                return error
            if verdict == TIMED_OUT:
                return TimeoutError(timed_out_message(spawner.configured_start_timeout))

    async def _refusals_in_words(self, started: Awaitable[Any]):
        """kubespawner's start; an error answer of the Kubernetes API becomes a message for
        the person, with whatever was made of the server deleted."""
        try:
            return await started
        except ApiException as err:
            self.spawner.log.error(
                "The Kubernetes API refused to start %s: HTTP %s %s",
                server_label(self.spawner),
                err.status,
                err.reason,
            )
            await self.stop(now=True)
            raise spawn_error(
                f"The cluster refused to create your server (HTTP {err.status} from the "
                "Kubernetes API); nothing was left behind; try again in a moment.",
                reason="cluster",
                status_code=503,
            ) from None

    async def _watch_scheduling(self) -> str:
        """The scheduler's message, once the pod has been refused for longer than the grace
        period (longer still while a cluster autoscaler scales up for it). A pod Kueue holds
        back is queued, not refused: its wait does not count."""
        spawner = self.spawner
        first_seen: float | None = None
        while True:
            await asyncio.sleep(0.25)
            pod = self._pod()
            if pod is not None and (pod.get("spec") or {}).get("nodeName"):
                # Scheduled: the rest is kubespawner's; wait to be cancelled when start ends.
                await asyncio.Event().wait()
            if is_admission_gated(pod):
                first_seen = None
                continue
            events = list(spawner.events)  # kubespawner's: this pod's events since this start
            failures = [e for e in events if is_lasting_failure(e)]
            if not failures:
                continue
            if first_seen is None:
                first_seen = time.monotonic()
            grace = spawner.fail_fast_seconds
            if any(e.get("reason") == "TriggeredScaleUp" for e in events):
                grace += spawner.scale_up_grace_seconds
            if time.monotonic() - first_seen >= grace:
                return failures[-1]["message"]

    async def poll(self) -> int | None:
        return await KubeSpawner.poll(self.spawner)

    async def stop(self, now: bool = False) -> None:
        await KubeSpawner.stop(self.spawner, now=now)

    async def progress(self) -> AsyncIterator[dict]:
        """kubespawner's progress (its pod events, and its slow-spawn message), each event
        said as a step: waiting for a node, scheduled on it, pulling, starting; with a Kueue
        LocalQueue, the pod's place in the queue while Kueue holds it back."""
        events = self._kube_progress()
        if not self.spawner.kueue_local_queue:
            async for event in events:
                yield event
            return
        async for event in _merged(events, self._queue_progress(), self.spawner.log):
            yield event

    async def _kube_progress(self) -> AsyncIterator[dict]:
        choice = getattr(self.spawner, "thinkube_choice", None)
        async for event in KubeSpawner.progress(self.spawner):
            raw = event.get("raw_event")
            if raw is not None:
                event = {
                    "progress": event.get("progress"),
                    "message": progress_message(raw, choice),
                }
            yield event

    async def _queue_progress(self) -> AsyncIterator[dict]:
        """While Kueue holds the pod back, its place in the queue, said when it changes."""
        spawner = self.spawner
        queue = spawner.kueue_local_queue
        said, gated_before = None, False
        while True:
            pod = self._pod()
            if pod is not None and not is_admission_gated(pod):
                if gated_before:
                    yield {"message": f"Admitted by the queue {queue!r}: starting your server."}
                return
            if pod is not None:
                gated_before = True
                choice = getattr(spawner, "thinkube_choice", None)
                message = queue_message(await self.queue_position(), queue, choice)
                if message != said:
                    said = message
                    yield {"message": message}
            await asyncio.sleep(spawner.kueue_poll_seconds if pod is not None else 0.25)

    async def queue_position(self) -> int | None:
        """This server's 1-based place in its LocalQueue, from Kueue's visibility API; None
        while its Workload is not listed as pending or the API cannot be read."""
        spawner = self.spawner
        api = spawner.api.api_client
        for version in self._visibility_versions:
            path = pending_workloads_path(spawner.namespace, spawner.kueue_local_queue, version)
            try:
                response = await api.call_api(
                    path,
                    "GET",
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=spawner.k8s_api_request_timeout,
                )
                try:
                    status, body = response.status, await response.read()
                finally:
                    response.release()
            except ApiException as err:
                status, body = err.status, b""
            except Exception as err:  # unreachable for now: the next poll tries again
                spawner.log.debug("Kueue's pending workloads: %s", type(err).__name__)
                return None
            if status == 404 and len(self._visibility_versions) > 1:
                continue  # an older Kueue: its visibility API has an older version
            if status != 200:
                spawner.log.warning(
                    "Cannot read the pending workloads of the queue %s: HTTP %s",
                    spawner.kueue_local_queue,
                    status,
                )
                return None
            self._visibility_versions = (version,)
            try:
                summary = json.loads(body)
            except ValueError:
                return None
            if not isinstance(summary, dict):
                return None
            return positions_by_owner(summary, "Pod").get(spawner.pod_name)
        return None

    def get_state(self) -> dict:
        return KubeSpawner.get_state(self.spawner)

    def load_state(self, state: dict) -> None:
        KubeSpawner.load_state(self.spawner, state)

    def clear_state(self) -> None:
        KubeSpawner.clear_state(self.spawner)


async def _merged(
    primary: AsyncIterator[dict], secondary: AsyncIterator[dict], log: Any
) -> AsyncIterator[dict]:
    """The events of both, as they come, until `primary` ends (its error is raised); an
    error of `secondary` is logged and ends only it."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(events: AsyncIterator[dict], is_primary: bool) -> None:
        try:
            async for event in events:
                await queue.put(event)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if is_primary:
                await queue.put(err)
            else:
                log.warning("Queue progress stopped: %s", type(err).__name__)
        finally:
            await events.aclose()
        if is_primary:
            await queue.put(end)

    tasks = [
        asyncio.ensure_future(pump(primary, True)),
        asyncio.ensure_future(pump(secondary, False)),
    ]
    try:
        while True:
            item = await queue.get()
            if item is end:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class CloudServer:
    """A RunPod pod that the hub proxies."""

    def __init__(self, spawner: ThinkubeSpawner, state: dict | None = None) -> None:
        self.spawner = spawner
        self._state = dict(state or {})
        self._runpod: RunPodBackend | None = None

    @staticmethod
    def holds(state: dict) -> bool:
        """Whether a restored state is a RunPod pod's."""
        return bool(state.get(STATE_POD_ID))

    @property
    def runpod(self) -> RunPodBackend:
        # Built on first use: a restored state arrives while the spawner is being built.
        if self._runpod is None:
            spawner = self.spawner
            self._runpod = RunPodBackend(spawner, spawner.cloud_settings(), type(spawner).__name__)
            self._runpod.load_state(self._state)
        return self._runpod

    def start(self) -> Awaitable[Any]:
        return asyncio.ensure_future(self._start())

    async def _start(self) -> str:
        """The chosen offer, checked like any choice, then rented; the same GPU in RunPod's
        other cloud next, if within the person's cap."""
        spawner = self.spawner
        choice = await spawner.choice_for_this_start()
        spawner.user_options = choice.as_user_options()
        spawner.thinkube_choice = choice
        chosen = choice.placement.offer
        menu = await spawner.menu()
        cap = spawner.cloud_cap()
        alike = [
            p.offer
            for p in menu.placements
            if p.offer is not None
            and p.offer != chosen
            and p.offer.gpu_type_id == chosen.gpu_type_id
            and p.offer.gpu_count == chosen.gpu_count
            and (p.offer.price(choice.spot) or cap + 1) <= cap
        ]
        image = (choice.image.get("metadata") or {}).get("cloud_image") or spawner.cloud_image
        spawner.log.info(
            "Spawning %s on RunPod: %s (%s), image %s",
            server_label(spawner),
            chosen.key,
            "spot" if choice.spot else "on demand",
            image,
        )
        try:
            return await self.runpod.start([chosen, *alike], image, spot=choice.spot)
        except CloudStartError as err:
            raise spawn_error_for(err) from None

    async def poll(self) -> int | None:
        return await self.runpod.poll()

    async def stop(self, now: bool = False) -> None:
        await self.runpod.stop()

    async def progress(self) -> AsyncIterator[dict]:
        async for event in self.runpod.progress():
            yield event

    def get_state(self) -> dict:
        return {**Spawner.get_state(self.spawner), **self.runpod.get_state()}

    def load_state(self, state: dict) -> None:
        Spawner.load_state(self.spawner, state)
        self._state = dict(state)
        if self._runpod is not None:
            self._runpod.load_state(state)

    def clear_state(self) -> None:
        Spawner.clear_state(self.spawner)
        self._state = {}
        if self._runpod is not None:
            self._runpod.clear_state()
