"""Jobs as Kubernetes Jobs (the backend of the queue on a cluster).

Starting a job creates its Job (see manifests.py) and then the ConfigMap with its script,
owned by the Job so that Kubernetes deletes both together; when the ConfigMap cannot be
made the Job is deleted again: nothing half-made is left. Kubernetes then runs it, ends it
at its deadline (`activeDeadlineSeconds`) and deletes it a while after it finished.

The backend lists and watches the Jobs and their pods in its namespace (label
`app.kubernetes.io/managed-by=thinkube`) and reports to the queue: a job's end (from the
Job's Complete or Failed condition, the exit code from its pod), a job's start when Kueue
admitted it (its pod bound to a node), a Job deleted by someone else (Lost). While a job
runs, its log is followed and its tail kept, so that what it wrote is stored with its end
even when its pod is gone (a deadline or a cancel deletes it; the TTL deletes it later).

With Kueue (`kueue_queue`), Jobs are created suspended in that LocalQueue and Kueue decides
what runs and where (`admits`); positions come from Kueue's visibility API.

Artifacts: with `models_claim`, a job writes them to /models/jobs/<user>/<id>/ on that
claim; the service reads them from its own (read-only) mount of the same claim at
`artifacts_root`. Without either, the API says why there are none.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import copy
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from thinkube_core.job_labels import JOB_ID_LABEL, label_value

from ..kube import ResourceWatcher, describe_error
from .manager import ArtifactsUnavailable, Ending, stored_request
from .manifests import (
    CONTAINER,
    artifacts_subpath,
    ending_of,
    entry_from_job,
    job_manifest,
    job_name,
    job_record,
    job_selector,
    pending_positions,
    pod_node,
    script_config_map,
)
from .spec import GPU_RESOURCE, JobRequest
from .store import ACTIVE

log = logging.getLogger("thinkube.jobs")

__all__ = ["KubeError", "KubeJobs"]

REQUEST_TIMEOUT_S = 30
POD_WAIT_S = 0.25
RECOVER_AT_ONCE = 16  # ConfigMaps read at once when the queue is rebuilt from the Jobs  # how often a log follower looks again for a pod that has not started


class KubeError(Exception):
    """Kubernetes refused a request; the message says what and why, in words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OutputTail:
    """The last `max_bytes` of a job's log, as lines, and how many lines came before."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(1, max_bytes)
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0
        self.total = 0  # lines seen, kept or not

    def add(self, line: str) -> None:
        if len(line) > self.max_bytes:
            line = line[-self.max_bytes :]
        self.lines.append(line)
        self.size += len(line) + 1
        self.total += 1
        while self.size > self.max_bytes and len(self.lines) > 1:
            self.size -= len(self.lines.popleft()) + 1

    def record(self) -> dict[str, Any]:
        skipped = self.total - len(self.lines)
        return {"text": "\n".join(self.lines), "truncated": skipped > 0, "skipped_lines": skipped}


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Text lines of a byte stream (the last one also without its newline)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    partial = ""
    async for chunk in chunks:
        parts = (partial + decoder.decode(chunk)).split("\n")
        partial = parts.pop()
        for line in parts:
            yield line
    partial += decoder.decode(b"", final=True)
    if partial:
        yield partial


def _after(after: str | None) -> int:
    try:
        return max(0, int(after or 0))
    except ValueError:
        return 0


class WatchedPods:
    """The jobs' pods as the watch sees them, by name and by their job id label: the
    reconcile after each watch event looks up every followed job's pods, which must not
    scan all pods each time (1,000 running jobs made that a million lookups per event)."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict] = {}
        self._by_job: dict[str, dict[str, dict]] = {}

    @staticmethod
    def _job_label(pod: Mapping[str, Any]) -> str:
        return ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_ID_LABEL) or ""

    def replace(self, items: list) -> None:
        self.by_name, self._by_job = {}, {}
        for item in items:
            self.apply("ADDED", item)

    def apply(self, event: str, obj: dict) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        old = self.by_name.pop(name, None)
        if old is not None:  # its labels may have changed since
            label = self._job_label(old)
            pods = self._by_job.get(label, {})
            pods.pop(name, None)
            if not pods:
                self._by_job.pop(label, None)
        if event != "DELETED":
            self.by_name[name] = obj
            self._by_job.setdefault(self._job_label(obj), {})[name] = obj

    def of_job(self, label: str) -> list[dict]:
        """The pods labelled with this job id (its label value)."""
        return list(self._by_job.get(label, {}).values())

    def __len__(self) -> int:
        return len(self.by_name)


class KubeJobs:
    """The queue's backend on Kubernetes: one Job per job in `namespace`.

    `api_client` makes the kubernetes_asyncio ApiClient (called once, on first use; this
    backend closes it); `ended(id, Ending)` and `started(id, node)` are the queue's.
    """

    name = "kubernetes"
    streams = "combined"  # Kubernetes keeps stdout and stderr as one log

    def __init__(
        self,
        api_client: Callable[[], Awaitable[client.ApiClient]],
        namespace: str,
        ended: Callable[[str, Ending], Awaitable[None]],
        started: Callable[[str, str | None], Awaitable[None]] | None = None,
        *,
        kueue_queue: str = "",
        ttl_s: int | None = 3600,
        run_as_user: int = 1000,
        python: str = "python",
        tolerations: Sequence[Mapping[str, Any]] = (),
        gpu_taint_keys: Sequence[str] = (GPU_RESOURCE,),
        max_output_bytes: int = 1 << 20,
        positions_interval_s: float = 5.0,
        deadline_grace_s: float = 30.0,
        stop_grace_s: int = 1,
        models_claim: str = "",
        artifacts_root: str = "",
        datasets_claim: str = "",
    ) -> None:
        self._make_api = api_client
        self.namespace = namespace
        self.ended = ended
        self.started = started
        self.kueue_queue = kueue_queue
        self.ttl_s = ttl_s
        self.run_as_user = run_as_user
        self.python = python
        self.tolerations = tuple(tolerations)
        self.gpu_taint_keys = tuple(gpu_taint_keys)
        self.max_output_bytes = max_output_bytes
        self.positions_interval_s = positions_interval_s
        # Kubernetes ends a Job at its deadline; the queue only steps in if it has not.
        self.deadline_grace_s = deadline_grace_s
        self.stop_grace_s = stop_grace_s
        self.models_claim = models_claim  # the claim job pods mount at /models
        self.artifacts_root = artifacts_root  # where this service sees that claim's root
        self.datasets_claim = datasets_claim  # the claim job pods mount at /datasets
        self.api: client.ApiClient | None = None
        # Followed logs stay open as long as their jobs run (one per running job): they
        # get a client of their own without a connection cap, so that they never take
        # the connections Jobs are created and deleted with.
        self.stream_api: client.ApiClient | None = None
        self.jobs: dict[str, dict] = {}  # Job name -> Job, as watched
        self.pods = WatchedPods()  # the jobs' pods, as watched
        self.followed: set[str] = set()  # job ids whose start and end are reported
        self._seen: set[str] = set()  # followed ids whose Job the watch has seen
        self._reported_start: set[str] = set()
        self._ending: set[str] = set()
        self._tails: dict[str, OutputTail] = {}
        self._collectors: dict[str, asyncio.Task] = {}
        self._positions: dict[str, int] = {}
        self._positions_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._reconcile_scheduled = False
        self._opening: asyncio.Lock | None = None
        self.watchers: list[ResourceWatcher] = []
        self._watch_failing = False

    @property
    def admits(self) -> bool:
        """With Kueue, Kueue decides what runs and where, not the queue's planner."""
        return bool(self.kueue_queue)

    # -- the API, on raw JSON ------------------------------------------------------------------

    async def _open(self) -> client.ApiClient:
        if self.api is not None:
            return self.api
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.api is None:
                api = await self._make_api()
                self._watch(api)
                self.api = api
        return self.api

    async def _request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        request_timeout: Any = REQUEST_TIMEOUT_S,
        stream: bool = False,
    ):
        """The raw response (the caller reads and releases it); KubeError when not 2xx.
        `stream`: a long-lived response (a followed log), on the uncapped client."""
        api = await self._open()
        if stream:
            api = self._stream_api(api)
        response = await api.call_api(
            path,
            method,
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=request_timeout,
        )
        if 200 <= response.status <= 299:
            return response
        try:
            status = json.loads(await response.read())
            message = status.get("message") if isinstance(status, dict) else None
        except Exception:  # not a Status: the code says enough
            message = None
        finally:
            response.release()
        raise KubeError(response.status, f"HTTP {response.status}: {message or response.reason}")

    async def _json(self, method: str, path: str, **kwargs) -> dict:
        response = await self._request(method, path, **kwargs)
        try:
            return json.loads(await response.read())
        finally:
            response.release()

    def _stream_api(self, api: client.ApiClient) -> client.ApiClient:
        if self.stream_api is None:
            configuration = copy.copy(api.configuration)
            configuration.connection_pool_maxsize = 0  # aiohttp: no limit
            self.stream_api = client.ApiClient(configuration)
        return self.stream_api

    def _path(self, plural: str, name: str = "") -> str:
        group = "/apis/batch/v1" if plural == "jobs" else "/api/v1"
        path = f"{group}/namespaces/{self.namespace}/{plural}"
        return f"{path}/{name}" if name else path

    # -- starting and stopping -----------------------------------------------------------------

    async def start(self, entry: Mapping[str, Any], request: JobRequest, node: str | None) -> dict:
        manifest = job_manifest(
            entry,
            request,
            stored_request(request),
            node,
            self.namespace,
            deadline_s=float(entry.get("deadline_s") or entry["expected_s"]),
            ttl_s=self.ttl_s,
            run_as_user=self.run_as_user,
            python=self.python,
            kueue_queue=self.kueue_queue,
            tolerations=self.tolerations,
            gpu_taint_keys=self.gpu_taint_keys,
            models_claim=self.models_claim,
            datasets_claim=self.datasets_claim,
        )
        name = manifest["metadata"]["name"]
        try:
            job = await self._json("POST", self._path("jobs"), body=manifest)
        except KubeError as err:
            raise KubeError(err.status, f"Kubernetes did not create the Job: {err}") from None
        except Exception as err:  # unreachable, timed out
            raise KubeError(0, f"Kubernetes could not be reached: {describe_error(err)}") from None
        try:
            await self._json(
                "POST",
                self._path("configmaps"),
                body=script_config_map(entry, request, self.namespace, owner=job),
            )
        except Exception as err:
            # Nothing half-made: the Job goes again (and its pod with it).
            with contextlib.suppress(Exception):
                await self._delete_job(name, grace_s=0)
            detail = err if isinstance(err, KubeError) else describe_error(err)
            raise KubeError(
                getattr(err, "status", 0), f"Kubernetes did not store the script: {detail}"
            ) from None
        self._follow(entry["id"])
        self._positions_wake.set()
        return self._placement(job)

    def artifacts_dir(self, entry: Mapping[str, Any]) -> Path | None:
        if not self.models_claim:
            raise ArtifactsUnavailable(
                "this cluster keeps no job artifacts (ThinkubeService.jobs_models_claim is "
                "not set): what a job wrote to $THINKUBE_ARTIFACTS_DIR was gone with its pod"
            )
        if not self.artifacts_root:
            raise ArtifactsUnavailable(
                f"job artifacts are kept on the claim {self.models_claim} "
                f"(/models/{artifacts_subpath(entry)}/ in a notebook server that mounts it), "
                "but this service does not serve them (ThinkubeService.jobs_artifacts_root "
                "is not set)"
            )
        return Path(os.path.realpath(self.artifacts_root)) / artifacts_subpath(entry)

    def _placement(self, job: Mapping[str, Any]) -> dict[str, Any]:
        meta = job.get("metadata") or {}
        record = {
            "backend": self.name,
            "namespace": self.namespace,
            "job": meta.get("name"),
            "uid": meta.get("uid"),
        }
        if self.kueue_queue:
            record["queue"] = self.kueue_queue
        return record

    def _follow(self, entry_id: str) -> None:
        self.followed.add(entry_id)
        self._schedule_reconcile()

    async def _delete_job(self, name: str, grace_s: int) -> None:
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "gracePeriodSeconds": grace_s,
        }
        try:
            response = await self._request("DELETE", self._path("jobs", name), body=options)
            response.release()
        except KubeError as err:
            if err.status != 404:
                raise

    async def stop(self, entry: Mapping[str, Any], reason: str) -> dict[str, Any] | None:
        """Delete the Job and its pod now (the pod with a short grace period, so that its
        GPU is free at once); returns the log's tail as kept so far."""
        entry_id = entry["id"]
        self.followed.discard(entry_id)
        tail = self._tails.get(entry_id)
        name = job_name(entry_id)
        # The garbage collector would delete the pods with their own grace period: delete
        # them now, beside the Job (their names from the watch once it has listed).
        if self.watchers and all(w.health.synced_once for w in self.watchers):
            pods = self.pods.of_job(label_value(entry_id))
        else:
            query = [("labelSelector", f"{JOB_ID_LABEL}={label_value(entry_id)}")]
            pods = (await self._json("GET", self._path("pods"), query=query)).get("items") or []

        async def delete_pod(pod: Mapping[str, Any]) -> None:
            with contextlib.suppress(KubeError):
                response = await self._request(
                    "DELETE",
                    self._path("pods", pod["metadata"]["name"]),
                    body={"gracePeriodSeconds": self.stop_grace_s},
                )
                response.release()

        await asyncio.gather(
            self._delete_job(name, self.stop_grace_s), *(delete_pod(pod) for pod in pods)
        )
        collector = self._collectors.pop(entry_id, None)
        if collector is not None:
            collector.cancel()
        self._tails.pop(entry_id, None)
        return tail.record() if tail is not None and tail.total else None

    async def reattach(self, entry: Mapping[str, Any]) -> bool:
        try:
            await self._json("GET", self._path("jobs", job_name(entry["id"])))
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        self._follow(entry["id"])
        return True

    async def _find_pod(self, entry_id: str) -> dict | None:
        """The job's pod: from the watch once it has listed, else asked for."""
        if self.watchers and all(w.health.synced_once for w in self.watchers):
            return self._newest_pod(entry_id)
        query = [("labelSelector", f"{JOB_ID_LABEL}={label_value(entry_id)}")]
        pods = await self._json("GET", self._path("pods"), query=query)
        return self._newest_pod(entry_id, pods.get("items") or [])

    async def recover(self) -> list[dict[str, Any]]:
        """The queue's entries as this namespace's Jobs describe them (see manifests)."""
        query = [("labelSelector", job_selector())]
        jobs = await self._json("GET", self._path("jobs"), query=query)
        pods = await self._json("GET", self._path("pods"), query=query)
        now = time.time()
        at_once = asyncio.Semaphore(RECOVER_AT_ONCE)
        pods_of: dict[str, list[dict]] = collections.defaultdict(list)  # by job id label
        for pod in pods.get("items") or []:
            pods_of[self._job_id_of(pod) or ""].append(pod)

        async def entry_of(job: dict) -> dict[str, Any] | None:
            record = job_record(job)
            if record is None:
                return None
            pod = self._newest_pod(record["id"], pods_of.get(label_value(record["id"]), []))
            # One by one: reading a ConfigMap by name needs no right to list them all.
            async with at_once:
                try:
                    script = await self._json(
                        "GET", self._path("configmaps", job["metadata"]["name"])
                    )
                except KubeError as err:
                    if err.status != 404:
                        raise
                    script = None
            return entry_from_job(job, script, pod, self._placement(job), now)

        entries = await asyncio.gather(*(entry_of(job) for job in jobs.get("items") or []))
        return [entry for entry in entries if entry is not None]

    # -- watching ------------------------------------------------------------------------------

    def _watch(self, api: client.ApiClient) -> None:
        selector = job_selector()
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        common = {"on_change": self._schedule_reconcile, "on_health": self._health_changed}
        self.watchers = [
            ResourceWatcher(
                api,
                "jobs",
                functools.partial(self._replace, self.jobs),
                functools.partial(self._apply, self.jobs),
                lister=functools.partial(
                    batch.list_namespaced_job, self.namespace, label_selector=selector
                ),
                **common,
            ),
            ResourceWatcher(
                api,
                "pods",
                self.pods.replace,
                self.pods.apply,
                lister=functools.partial(
                    core.list_namespaced_pod, self.namespace, label_selector=selector
                ),
                **common,
            ),
        ]
        self._tasks = [asyncio.ensure_future(w.run()) for w in self.watchers]
        if self.admits:
            self._tasks.append(asyncio.ensure_future(self._poll_positions()))

    def _health_changed(self) -> None:
        """Log once when the watches fail (e.g. no permission in the namespace) and once
        when they are back, never once per retry."""
        failing = [
            f"{w.kind}: {w.health.last_error}"
            for w in self.watchers
            if w.health.unhealthy_since is not None
        ]
        if failing and not self._watch_failing:
            log.warning(
                "watching the jobs in namespace %s failed (%s); retrying",
                self.namespace,
                "; ".join(failing),
            )
        elif not failing and self._watch_failing:
            log.info("watching the jobs in namespace %s again", self.namespace)
        self._watch_failing = bool(failing)

    @staticmethod
    def _replace(held: dict[str, dict], items: list) -> None:
        held.clear()
        for item in items:
            held[item["metadata"]["name"]] = item

    @staticmethod
    def _apply(held: dict[str, dict], event: str, obj: dict) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        if event == "DELETED":
            held.pop(name, None)
        else:
            held[name] = obj

    @staticmethod
    def _job_id_of(pod: Mapping[str, Any]) -> str | None:
        return ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_ID_LABEL)

    def _newest_pod(self, entry_id: str, pods=None) -> dict | None:
        """The job's pod (a Job resumed after Kueue suspended it again has a newer one)."""
        wanted = label_value(entry_id)
        if pods is None:
            mine = self.pods.of_job(wanted)
        else:
            mine = [p for p in pods if self._job_id_of(p) == wanted]
        mine.sort(
            key=lambda p: (
                not p["metadata"].get("deletionTimestamp"),
                p["metadata"].get("creationTimestamp") or "",
            )
        )
        return mine[-1] if mine else None

    def _schedule_reconcile(self) -> None:
        if self._reconcile_scheduled:
            return
        self._reconcile_scheduled = True
        asyncio.get_running_loop().call_soon(self._reconcile)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _reconcile(self) -> None:
        """Compare what is watched with what was reported; report what changed."""
        self._reconcile_scheduled = False
        synced = bool(self.watchers) and all(w.health.synced_once for w in self.watchers)
        for entry_id in list(self.followed):
            if entry_id in self._ending:
                continue
            job = self.jobs.get(job_name(entry_id))
            if job is None:
                if synced and entry_id in self._seen:
                    self._ending.add(entry_id)
                    self._spawn(
                        self._end(
                            entry_id,
                            Ending(None, "Lost", "its Kubernetes Job was deleted by someone else"),
                        )
                    )
                continue
            self._seen.add(entry_id)
            pod = self._newest_pod(entry_id)
            ending = ending_of(job, pod)
            if ending is not None:
                self._ending.add(entry_id)
                self._spawn(self._end(entry_id, Ending(*ending)))
                continue
            node = pod_node(pod)
            if node and entry_id not in self._collectors:
                self._collectors[entry_id] = self._spawn(self._collect(entry_id))
            suspended = (job.get("spec") or {}).get("suspend")
            if node and not suspended and entry_id not in self._reported_start:
                self._reported_start.add(entry_id)
                if self.admits and self.started is not None:
                    self._spawn(self.started(entry_id, node))

    async def _end(self, entry_id: str, ending: Ending) -> None:
        try:
            if ending.reason != "Lost":
                output = await self._final_output(entry_id)
                if output is not None:
                    ending = Ending(ending.exit_code, ending.reason, ending.message, output)
        except Exception as err:  # the ending counts more than its output
            log.warning("job %s: its output could not be read: %s", entry_id, describe_error(err))
        finally:
            self.followed.discard(entry_id)
            self._ending.discard(entry_id)
            self._reported_start.discard(entry_id)
            self._seen.discard(entry_id)
            self._positions.pop(entry_id, None)
        await self.ended(entry_id, ending)

    async def _final_output(self, entry_id: str) -> dict[str, Any] | None:
        """What the job wrote: the followed tail once its stream ended (the container has
        ended, so it will soon), else the log read once."""
        collector = self._collectors.pop(entry_id, None)
        if collector is not None:
            await asyncio.wait({collector}, timeout=5)
            collector.cancel()
        tail = self._tails.pop(entry_id, None)
        pod = self._newest_pod(entry_id)
        if (tail is None or not tail.total) and pod is not None:
            tail = OutputTail(self.max_output_bytes)
            with contextlib.suppress(KubeError):
                async for line in self._pod_log_lines(pod["metadata"]["name"], follow=False):
                    tail.add(line)
        return tail.record() if tail is not None and tail.total else None

    async def _collect(self, entry_id: str) -> None:
        """Follow a running job's log, keeping its tail."""
        tail = self._tails.setdefault(entry_id, OutputTail(self.max_output_bytes))
        while entry_id in self.followed:
            pod = self._newest_pod(entry_id)
            if pod is None:
                return
            try:
                async for line in self._pod_log_lines(pod["metadata"]["name"], follow=True):
                    tail.add(line)
                return  # the container ended
            except KubeError as err:
                if err.status == 404:
                    return
                await asyncio.sleep(POD_WAIT_S)  # not started yet
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.debug("job %s: following its log failed: %s", entry_id, describe_error(err))
                await asyncio.sleep(POD_WAIT_S)

    async def _pod_log_lines(self, pod_name: str, follow: bool) -> AsyncIterator[str]:
        query = [("container", CONTAINER)]
        if follow:
            query.append(("follow", "true"))
        response = await self._request(
            "GET",
            self._path("pods", pod_name) + "/log",
            query=query,
            request_timeout=(REQUEST_TIMEOUT_S, None) if follow else REQUEST_TIMEOUT_S,
            stream=follow,
        )
        try:
            async for line in _lines(response.content.iter_any()):
                yield line
        finally:
            response.release()

    # -- Kueue's positions ---------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """Job id -> 1-based position in the LocalQueue, as Kueue last said."""
        return dict(self._positions)

    async def refresh_positions(self) -> dict[str, int]:
        path = (
            f"/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/{self.namespace}"
            f"/localqueues/{self.kueue_queue}/pendingworkloads"
        )
        summary = await self._json("GET", path)
        waiting = {job_name(i): i for i in self.followed if i not in self._reported_start}
        self._positions = pending_positions(summary, waiting)
        return self._positions

    async def _poll_positions(self) -> None:
        while True:
            waiting = any(i not in self._reported_start for i in self.followed)
            if waiting:
                try:
                    await self.refresh_positions()
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # keep the last positions; try again later
                    log.debug("Kueue's pending workloads: %s", describe_error(err))
            else:
                self._positions = {}
            self._positions_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.positions_interval_s):
                    await self._positions_wake.wait()

    # -- logs and output -----------------------------------------------------------------------

    async def logs(
        self, entry: Mapping[str, Any], after: str | None, follow: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        """The job's log as (line number, "combined", text): Kubernetes keeps stdout and
        stderr as one stream. A resumed stream (`after`: the last line number received)
        starts at the next line."""
        sent = _after(after)
        entry_id = entry["id"]
        if entry["status"] not in ACTIVE and entry.get("output"):
            for number, line in _stored_lines(entry["output"]):
                if number > sent:
                    yield str(number), "combined", line
            return
        while True:
            pod = await self._find_pod(entry_id)
            if pod is None and entry["status"] not in ACTIVE:
                return  # ended, and its pod is gone
            if pod is not None:
                number = 0
                try:
                    async for line in self._pod_log_lines(pod["metadata"]["name"], follow):
                        number += 1
                        if number > sent:
                            sent = number
                            yield str(number), "combined", line
                    return
                except KubeError as err:
                    if not follow or err.status == 404:
                        return
            if not follow:
                return
            if entry_id not in self.followed and not self._newest_pod(entry_id):
                return  # it ended (or was never started here) before its pod ran
            await asyncio.sleep(POD_WAIT_S)

    def output(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The job's output as results show it (`streams` is combined: all in stdout)."""
        stored = entry.get("output")
        if stored is None and entry["id"] in self._tails:
            stored = self._tails[entry["id"]].record()
        stored = stored or {}
        return {
            "stdout": stored.get("text", ""),
            "stderr": None,
            "truncated": bool(stored.get("truncated")),
        }

    async def close(self) -> None:
        # The Jobs keep running; only this service's watches and followers end.
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._collectors.clear()
        for api in (self.api, self.stream_api):
            if api is not None:
                await api.close()
        self.api = self.stream_api = None


def _stored_lines(output: Mapping[str, Any]) -> list[tuple[int, str]]:
    """A stored output's lines with their line numbers in the whole log."""
    first = int(output.get("skipped_lines") or 0) + 1
    text = output.get("text") or ""
    return list(enumerate(text.split("\n"), start=first)) if text else []
