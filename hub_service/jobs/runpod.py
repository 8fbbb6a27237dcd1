"""Jobs on RunPod pods (the queue's backend for jobs placed on a cloud offer, see
placement.py and routing.py).

Starting a job rents a pod in the background (`start` returns at once): the first of the
job's offers with a machine free, its command the job runner (thinkube_core/job_runner.py,
sent in the pod's environment with the script), `terminateAfter` = the job's deadline plus
the time it has to report, plus a margin, so that RunPod ends it even when this service is
gone. A RunPod error (no machine free, a refused key, RunPod not answering) fails the job
with the reason in words; the client removes a pod a failed request may have made. Each job's
pod is marked with its job (metadata `job_id`, `job_hub`) and recorded in the store as soon
as it exists; a restarted service follows it again (finding it by its mark if its id was not
recorded yet), and ends the pods of this hub that no running job owns.

While it runs, its log is followed from RunPod's REST v2 (`GET /v2/pods/{id}/logs`, Server-
Sent Events): a stream that drops is resumed after the last event received
(`Last-Event-ID`: no line lost, none repeated); when streams keep failing, the log is polled
(short requests every few seconds, each resuming the same way) until one succeeds. Its lines
are kept here (the last `max_output_bytes`) for whoever follows the job, and stored with its
end.

The pod reports back to this service (uploads.py): its artifacts, then its result (exit
code, reason), with a token valid only for this job's uploads while it runs, sent in the
pod's environment and kept here only as a hash. Once the result is in, the pod is terminated
and the job ends with it. A pod that vanishes or stops without reporting, or that reports
nothing by the deadline plus `result_grace_s`, ends the job `Lost`, and is terminated.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thinkube_core import job_runner
from thinkube_core.runpod import (
    AuthError,
    CapacityError,
    InvalidRequestError,
    NotFoundError,
    Pod,
    PodRequest,
    RunPodClient,
    RunPodError,
    UnavailableError,
)
from thinkube_core.runpod.models import ENDED_STATUSES, RUNNING

from ..background import cancel_and_wait
from .manager import Ending
from .placement import offers_of
from .spec import JobRequest
from .store import ACTIVE

log = logging.getLogger("thinkube.jobs")

__all__ = ["RunPodJobSettings", "RunPodJobs", "token_hash"]

BACKEND = "runpod"
# RunPod backfills at most this many lines of a log that is followed again.
TAIL_MAX = 5000
# Event ids remembered per job to drop a line RunPod would send twice.
SEEN_IDS = 2000
TERMINATE_ATTEMPTS = 5


@dataclass(frozen=True)
class RunPodJobSettings:
    """How jobs run on RunPod (the service's `jobs_runpod_*` settings)."""

    public_url: str  # where pods reach this service: https://hub.example.org/services/x/
    artifacts_folder: Path  # <folder>/<job id>/ holds what each job uploaded
    name_prefix: str = "thinkube"  # pods are named <prefix>-job-<id>, marked job_hub=<prefix>
    python: str = "python3"  # the command in the pod's image that runs the job runner
    result_grace_s: float = 600.0  # after the deadline, uploads are still taken this long
    exit_grace_s: float = 30.0  # a pod gone or stopped: a result may still arrive this long
    status_interval_s: float = 15.0  # how often a running job's pod is looked at
    terminate_margin_s: float = 300.0  # terminateAfter = deadline + result grace + this
    container_disk_gb: int = 40
    max_output_bytes: int = 1 << 20
    max_artifact_bytes: int = 20 << 30  # all of one job's artifacts
    log_poll_interval_s: float = 5.0
    log_poll_window_s: float = 2.0
    stream_failures_before_polling: int = 2
    drain_s: float = 10.0  # after the result, how long the log may take to reach its end
    read_timeout_s: float = 60.0  # a log stream silent this long is resumed


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_name(prefix: str, entry_id: str) -> str:
    return f"{prefix}-job-{entry_id}"[:59]


def plain_reason(err: RunPodError) -> str:
    """A RunPod failure at creation, in words (the client's messages are redacted)."""
    if isinstance(err, CapacityError):
        return "RunPod has no machine with that GPU free now (out of stock); try again later"
    if isinstance(err, AuthError):
        return "RunPod refused this hub's API key"
    if isinstance(err, UnavailableError):
        return f"RunPod did not answer ({err})"
    if isinstance(err, InvalidRequestError):
        return f"RunPod refused the pod: {err}"
    return f"RunPod failed: {err}"


class LineBuffer:
    """The lines of a job's log kept here: the last `max_bytes` of them, each numbered in the
    whole log from 1, and a way to wait for more."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(1, max_bytes)
        self.lines: collections.deque[tuple[int, str]] = collections.deque()
        self.size = 0
        self.total = 0
        self.closed = False
        self._changed = asyncio.Event()

    def add(self, line: str) -> None:
        if len(line) > self.max_bytes:
            line = line[-self.max_bytes :]
        self.total += 1
        self.lines.append((self.total, line))
        self.size += len(line) + 1
        while self.size > self.max_bytes and len(self.lines) > 1:
            self.size -= len(self.lines.popleft()[1]) + 1
        self._poke()

    def close(self) -> None:
        self.closed = True
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def after(self, number: int) -> list[tuple[int, str]]:
        return [(n, line) for n, line in self.lines if n > number]

    async def wait(self, within_s: float) -> None:
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await changed.wait()

    def record(self) -> dict[str, Any]:
        skipped = self.total - len(self.lines)
        return {
            "text": "\n".join(line for _, line in self.lines),
            "truncated": skipped > 0,
            "skipped_lines": skipped,
        }


@dataclass
class JobRun:
    """A job this service follows on RunPod."""

    id: str
    user: str
    deadline: float
    token_sha256: str
    buffer: LineBuffer
    pod_id: str | None = None
    result: dict[str, Any] | None = None
    task: asyncio.Task | None = None
    follower: asyncio.Task | None = None
    stopped_since: float | None = None  # when its pod was first seen gone or stopped
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class LogFollower:
    """Follows one pod's log into a LineBuffer (see the module: resumed streams, polling)."""

    def __init__(
        self, client: RunPodClient, pod_id: str, buffer: LineBuffer, settings: RunPodJobSettings
    ) -> None:
        self.client = client
        self.pod_id = pod_id
        self.buffer = buffer
        self.settings = settings
        self.last_id: str | None = None
        self._seen: collections.deque[str] = collections.deque(maxlen=SEEN_IDS)
        self._seen_set: set[str] = set()
        self.streams = 0  # requests made (for tests and logs)
        self.polls = 0

    def _take(self, event_id: str | None, line: str) -> None:
        if event_id is not None:
            if event_id in self._seen_set:
                return  # sent again: the client already has it
            if len(self._seen) == self._seen.maxlen:
                self._seen_set.discard(self._seen[0])
            self._seen.append(event_id)
            self._seen_set.add(event_id)
            self.last_id = event_id
        self.buffer.add(line)

    async def _read(self, window_s: float | None) -> None:
        self.streams += 1
        async for event in self.client.pod_log_events(
            self.pod_id,
            source="container",
            tail=TAIL_MAX if self.last_id is None else None,
            last_event_id=self.last_id,
            read_timeout_s=self.settings.read_timeout_s,
            duration_s=window_s,
        ):
            self._take(event.id, event.line)

    async def run(self) -> None:
        """Until the pod has stopped and its log has been read to its end, or is gone."""
        failures = 0
        settings = self.settings
        while True:
            polling = failures >= settings.stream_failures_before_polling
            try:
                if polling:
                    self.polls += 1
                await self._read(settings.log_poll_window_s if polling else None)
                failures = 0
                pod = await self.client.get_pod(self.pod_id)
                if pod is None:
                    return  # gone: RunPod has no more of its log
                if pod.desired_status != RUNNING:
                    if polling:
                        await self._read(None)  # the pod stopped: this stream ends by itself
                    return
                if polling:
                    await asyncio.sleep(settings.log_poll_interval_s)
            except NotFoundError:
                return
            except RunPodError as err:
                failures += 1
                wait = (
                    settings.log_poll_interval_s
                    if failures >= settings.stream_failures_before_polling
                    else min(settings.log_poll_interval_s, 0.1 * 2**failures)
                )
                log.info(
                    "RunPod pod %s: its log stream failed (%s); %s in %.1fs",
                    self.pod_id,
                    err,
                    "polling"
                    if failures >= settings.stream_failures_before_polling
                    else "resuming",
                    wait,
                )
                await asyncio.sleep(wait)


class RunPodJobs:
    """The queue's backend for jobs on RunPod. `ended(id, Ending)` is the queue's;
    `record(id, placement)` writes a job's placement to the store; `lookup(id)` reads an
    entry from it."""

    name = BACKEND
    streams = "combined"  # RunPod's log has stdout and stderr as one stream

    def __init__(
        self,
        client: RunPodClient,
        settings: RunPodJobSettings,
        ended: Callable[[str, Ending], Awaitable[None]],
        record: Callable[[str, dict[str, Any]], Awaitable[Any]],
        lookup: Callable[[str], Awaitable[Mapping[str, Any] | None]],
    ) -> None:
        self.client = client
        self.settings = settings
        self.ended = ended
        self.record = record
        self.lookup = lookup
        self.runs: dict[str, JobRun] = {}
        self._background: set[asyncio.Task] = set()
        # The queue ends a job only if this backend has not, this long after its deadline.
        self.deadline_grace_s = settings.result_grace_s + settings.exit_grace_s + 60.0

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- starting ------------------------------------------------------------------------------

    def job_env(
        self, entry: Mapping[str, Any], request: JobRequest, token: str, deadline: float
    ) -> dict[str, str]:
        """What the pod's environment carries for the runner (see job_runner)."""
        return {
            "TK_JOB_RUNNER": RUNNER_SOURCE,
            "TK_JOB_SCRIPT": job_runner.encode_script(request.script),
            "TK_JOB_SCRIPT_NAME": request.script_name,
            "TK_JOB_UPLOAD_URL": f"{self.settings.public_url}api/v1/jobs/{entry['id']}/upload/",
            "TK_JOB_TOKEN": token,
            "TK_JOB_DEADLINE": f"{deadline:.3f}",
            "PYTHONUNBUFFERED": "1",
        }

    def pod_request(
        self, entry: Mapping[str, Any], request: JobRequest, token: str, deadline: float
    ):
        """How to make each offer's pod."""
        settings = self.settings
        terminate_after = deadline + settings.result_grace_s + settings.terminate_margin_s
        command = f"{settings.python} -c \"import os; exec(os.environ['TK_JOB_RUNNER'])\""

        def make(offer) -> PodRequest:
            return PodRequest(
                name=pod_name(settings.name_prefix, entry["id"]),
                image_name=str(request.image.get("image") or ""),
                gpu_type_id=offer.gpu_type_id,
                gpu_count=offer.gpu_count,
                cloud_type=offer.cloud_type,
                docker_args=command,
                env=self.job_env(entry, request, token, deadline),
                meta={
                    "job_hub": settings.name_prefix,
                    "job_id": entry["id"],
                    "job_user": entry["user"],
                },
                container_disk_in_gb=settings.container_disk_gb,
                terminate_after=_iso(terminate_after),
            )

        return make

    async def start(self, entry: Mapping[str, Any], request: JobRequest, node: str | None) -> dict:
        placement = request.placement or {}
        if not offers_of(placement):
            raise RuntimeError("the job names no RunPod offer")
        token = secrets.token_urlsafe(32)
        deadline = time.time() + float(entry["deadline_s"])
        run = JobRun(
            entry["id"],
            entry["user"],
            deadline,
            token_hash(token),
            LineBuffer(self.settings.max_output_bytes),
        )
        self.runs[run.id] = run
        run.task = self._spawn(self._rent(run, entry, request, token), f"runpod-job-{run.id}")
        return self._record_of(run)

    def _record_of(self, run: JobRun, **more: Any) -> dict[str, Any]:
        record = {
            "backend": BACKEND,
            "pod_id": run.pod_id,
            "pod_name": pod_name(self.settings.name_prefix, run.id),
            "deadline": run.deadline,
            "token_sha256": run.token_sha256,
        }
        record.update(more)
        return record

    async def _rent(
        self, run: JobRun, entry: Mapping[str, Any], request: JobRequest, token: str
    ) -> None:
        placement = request.placement or {}
        offers = offers_of(placement)
        try:
            pod, offer = await self.client.create_first_available(
                offers,
                self.pod_request(entry, request, token, run.deadline),
                spot=bool(placement.get("spot")),
                attempts=len(offers),
            )
        except RunPodError as err:
            log.warning("job %s: no RunPod pod: %s", run.id, err)
            await self._sweep_job(run.id)  # nothing of it may stay rented
            await self._end(run, Ending(None, "Failed", f"could not start: {plain_reason(err)}"))
            return
        except Exception:
            log.exception("job %s: renting its RunPod pod failed", run.id)
            await self._sweep_job(run.id)
            await self._end(
                run, Ending(None, "Failed", "could not start: renting the RunPod pod failed")
            )
            return
        run.pod_id = pod.id
        log.info(
            "job %s of %s runs on RunPod pod %s (%s, $%s/h)",
            run.id,
            run.user,
            pod.id,
            offer.display_name,
            pod.cost_per_hr,
        )
        try:
            await self.record(
                run.id,
                self._record_of(run, gpu=offer.display_name, cost_per_hr=pod.cost_per_hr),
            )
        except Exception as err:  # followed all the same; a restart finds it by its mark
            log.warning("job %s: its pod %s could not be recorded: %s", run.id, pod.id, err)
        await self._follow(run)

    # -- following ----------------------------------------------------------------------------

    async def _follow(self, run: JobRun) -> None:
        """Watch the pod until the job reports, is lost, or reaches its deadline."""
        assert run.pod_id is not None
        follower = LogFollower(self.client, run.pod_id, run.buffer, self.settings)
        run.follower = self._spawn(follower.run(), f"runpod-log-{run.id}")
        settings = self.settings
        while run.result is None:
            now = time.time()
            if now >= run.deadline + settings.result_grace_s:
                await self._lose(run, "the job did not report a result by its deadline")
                return
            try:
                pod = await self.client.get_pod(run.pod_id)
            except RunPodError as err:
                log.info("job %s: RunPod pod %s not looked at: %s", run.id, run.pod_id, err)
                pod = _UNKNOWN
            if pod is not _UNKNOWN and (pod is None or pod.desired_status in ENDED_STATUSES):
                run.stopped_since = run.stopped_since or now
                if now - run.stopped_since >= settings.exit_grace_s:
                    what = (
                        "its RunPod pod vanished"
                        if pod is None or pod.desired_status == "TERMINATED"
                        else "its RunPod pod stopped"
                    )
                    await self._lose(run, f"{what} without reporting a result")
                    return
            wait = settings.status_interval_s
            if run.stopped_since is not None:
                wait = min(wait, settings.exit_grace_s / 4 or wait)
            run.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await run.wake.wait()
        await self._finish(run)

    async def _finish(self, run: JobRun) -> None:
        """The result is in: the log is read to its end (for a while), the pod terminated,
        the job ended with the result."""
        result = run.result or {}
        if run.follower is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_s):
                    await asyncio.shield(run.follower)
        await self._terminate(run)
        code = result.get("exit_code")
        reason = result.get("reason") or ("Completed" if code == 0 else "Failed")
        message = result.get("message") or {
            "Completed": "",
            "DeadlineExceeded": "ran past its deadline",
        }.get(reason, f"exit code {code}")
        await self._end(run, Ending(code, reason, message, run.buffer.record()))

    async def _lose(self, run: JobRun, message: str) -> None:
        log.warning("job %s is lost: %s", run.id, message)
        await self._terminate(run)
        await self._end(run, Ending(None, "Lost", message, run.buffer.record()))

    async def _end(self, run: JobRun, ending: Ending) -> None:
        run.buffer.close()
        await cancel_and_wait(run.follower)
        try:
            await self.ended(run.id, ending)
        finally:
            # Only now: until the ending (with its output) is stored, its log is served here.
            self.runs.pop(run.id, None)

    async def _terminate(self, run: JobRun) -> None:
        if run.follower is not None and not run.follower.done():
            run.follower.cancel()
        if run.pod_id is None:
            await self._sweep_job(run.id)
            return
        await self._terminate_pod(run.pod_id, run.id)

    async def _terminate_pod(self, pod_id: str, entry_id: str) -> None:
        for attempt in range(TERMINATE_ATTEMPTS):
            try:
                await self.client.terminate_pod(pod_id)
                return
            except RunPodError as err:
                log.warning("job %s: RunPod pod %s not terminated yet (%s)", entry_id, pod_id, err)
                await asyncio.sleep(min(30.0, 2.0**attempt))
        log.error(
            "job %s: RunPod pod %s could not be terminated; RunPod ends it at its "
            "terminateAfter, or the next sweep does",
            entry_id,
            pod_id,
        )

    async def _sweep_job(self, entry_id: str) -> None:
        """Terminate every pod marked with this job (one a failed request may have made)."""
        try:
            pods = await self.client.list_pods(
                meta={"job_hub": self.settings.name_prefix, "job_id": entry_id}
            )
        except RunPodError as err:
            log.warning("job %s: its pods could not be listed: %s", entry_id, err)
            return
        for pod in pods:
            await self._terminate_pod(pod.id, entry_id)

    # -- the pod's reports --------------------------------------------------------------------

    def accepts_token(self, entry: Mapping[str, Any], token: str) -> bool:
        """Whether `token` is this job's upload token, and it still runs (within its time to
        report). Compared in constant time, as hashes: the token itself is not kept."""
        placement = entry.get("placement") or {}
        expected = placement.get("token_sha256")
        if (
            placement.get("backend") != BACKEND
            or entry.get("status") not in ACTIVE
            or not isinstance(expected, str)
            or not token
        ):
            return False
        deadline = placement.get("deadline")
        if isinstance(deadline, int | float) and time.time() > (
            deadline + self.settings.result_grace_s
        ):
            return False
        return hmac.compare_digest(token_hash(token), expected)

    async def accept_result(self, entry: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """The pod's result: recorded (a restart finishes the job with it), then the job is
        ended with it (in the background: the pod is terminated first)."""
        run = self.runs.get(entry["id"])
        placement = dict(entry.get("placement") or {})
        if run is not None and run.result is not None:
            return  # sent again (its answer was lost): already in hand
        placement["result"] = dict(result)
        await self.record(entry["id"], placement)
        if run is None:
            return  # not followed here yet: reattach finishes it
        run.result = dict(result)
        run.wake.set()

    def artifacts_dir(self, entry: Mapping[str, Any]) -> Path | None:
        """Where this job's uploaded artifacts are kept: an absolute path without links in
        it, which need not exist (a job that sent none)."""
        return Path(os.path.realpath(self.artifacts_root(entry["id"])))

    def artifacts_root(self, entry_id: str) -> Path:
        return self.settings.artifacts_folder / entry_id

    # -- the queue's other calls ---------------------------------------------------------------

    async def stop(self, entry: Mapping[str, Any], reason: str) -> Mapping[str, Any] | None:
        run = self.runs.pop(entry["id"], None)
        pod_id = (entry.get("placement") or {}).get("pod_id")
        output = None
        if run is not None:
            await cancel_and_wait(run.task)  # a pod being rented is removed by the client
            pod_id = run.pod_id or pod_id
            run.buffer.close()
            await cancel_and_wait(run.follower)
            output = run.buffer.record()
        if pod_id:
            await self._terminate_pod(pod_id, entry["id"])
        else:
            await self._sweep_job(entry["id"])
        return output

    async def reattach(self, entry: Mapping[str, Any]) -> bool:
        """After a restart: follow the job's pod again (found by its recorded id, else by its
        mark); False when there is none. A result that came before the restart ends it."""
        placement = entry.get("placement") or {}
        if placement.get("backend") != BACKEND or not placement.get("token_sha256"):
            await self._sweep_job(entry["id"])
            return False
        pod = await self._pod_of(entry["id"], placement.get("pod_id"))
        run = JobRun(
            entry["id"],
            entry["user"],
            float(placement.get("deadline") or entry.get("deadline_at") or time.time()),
            placement["token_sha256"],
            LineBuffer(self.settings.max_output_bytes),
            pod_id=pod.id if pod is not None else placement.get("pod_id"),
            result=placement.get("result"),
        )
        if pod is None and run.result is None:
            return False
        self.runs[run.id] = run
        if pod is not None and pod.id != placement.get("pod_id"):
            await self.record(run.id, {**placement, "pod_id": pod.id})
        if run.result is not None:
            run.task = self._spawn(self._finish(run), f"runpod-job-{run.id}")
        else:
            run.task = self._spawn(self._follow(run), f"runpod-job-{run.id}")
        return True

    async def _pod_of(self, entry_id: str, pod_id: str | None) -> Pod | None:
        if pod_id:
            pod = await self.client.get_pod(pod_id)
            if pod is not None and pod.desired_status != "TERMINATED":
                return pod
        pods = [
            p
            for p in await self.client.list_pods(
                meta={"job_hub": self.settings.name_prefix, "job_id": entry_id}
            )
            if p.desired_status != "TERMINATED"
        ]
        for extra in pods[1:]:  # one pod per job: any other is a stray
            await self._terminate_pod(extra.id, entry_id)
        return pods[0] if pods else None

    def sweep_soon(self) -> None:
        self._spawn(self.sweep(), "runpod-job-sweep")

    async def sweep(self) -> list[str]:
        """Terminate this hub's job pods that no running job owns (its job ended or is
        unknown, or it records another pod); the ids terminated."""
        try:
            pods = await self.client.list_pods(meta={"job_hub": self.settings.name_prefix})
        except RunPodError as err:
            log.warning("RunPod job pods not swept: %s", err)
            return []
        ended = []
        for pod in pods:
            if pod.desired_status == "TERMINATED":
                continue
            entry_id = pod.meta.get("job_id") or ""
            entry = await self.lookup(entry_id) if entry_id else None
            recorded = ((entry or {}).get("placement") or {}).get("pod_id")
            if entry is not None and entry["status"] in ACTIVE and recorded in (None, pod.id):
                continue
            log.warning(
                "RunPod pod %s of job %s has no running job: terminating it", pod.id, entry_id
            )
            await self._terminate_pod(pod.id, entry_id)
            ended.append(pod.id)
        return ended

    async def logs(
        self, entry: Mapping[str, Any], after: str | None, follow: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        """The job's log as (line number, "combined", text), resumed after `after`."""
        sent = _after(after)
        run = self.runs.get(entry["id"])
        if run is None:
            output = entry.get("output") or {}
            first = int(output.get("skipped_lines") or 0) + 1
            text = output.get("text") or ""
            for number, line in enumerate(text.split("\n") if text else [], first):
                if number > sent:
                    yield str(number), "combined", line
            return
        while True:
            for number, line in run.buffer.after(sent):
                sent = number
                yield str(number), "combined", line
            if not follow or run.buffer.closed:
                return
            await run.buffer.wait(1.0)

    async def close(self) -> None:
        # The pods keep running (a restarted service follows them again); creations under
        # way are cancelled, which removes what they may have made.
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        self.runs.clear()


_UNKNOWN = object()  # a pod that could not be looked at this time


def _after(after: str | None) -> int:
    try:
        return max(0, int(after or 0))
    except ValueError:
        return 0


RUNNER_SOURCE = Path(job_runner.__file__).read_text(encoding="utf-8")
