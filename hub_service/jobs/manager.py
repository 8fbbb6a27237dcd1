"""The hub's GPU queue, running: submissions in, the planner's decisions out to a backend
(Kubernetes Jobs, or processes on this machine), endings back in, everything recorded in
the store so that a restarted service loses nothing.

The planner (`queue.plan`) is asked again whenever something that changes its answer
happens: a cancel, an ending, the inventory publishing new documents, or a submission that
could start (one of a kind for which nothing ahead of it waits already; the others are
planned within `refresh_s`, to refresh estimates). It runs off the request path, debounced,
in steps that give way to requests; each request reads the last plan. An entry submitted
since is placed in that plan's order by its order key (a position without an expected node
or start) until the next plan places it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thinkube_core.scheduling import PodRules, pod_demand

from ..background import cancel_and_wait
from .queue import Plan, QueueEntry, Running, planning, queue_order, with_assumed
from .spec import JobRequest, job_pod_spec
from .store import ACTIVE, CANCELLED, COMPLETED, FAILED, LOST, QUEUED, RUNNING, JobStore
from .waiting import (
    EXPIRED,
    SERVER,
    STARTED,
    ServerStarter,
    WaitingRequest,
    after_failed_start,
    join_estimates,
    server_pod_of,
    stored_waiting_request,
)

log = logging.getLogger("thinkube.jobs")

__all__ = ["ArtifactsUnavailable", "Ending", "JobBackend", "JobQueue", "QueueSettings"]

# Running jobs followed again at once after a restart (each a request on Kubernetes).
REATTACH_AT_ONCE = 16
# Entries read between two turns of the event loop when the queue is planned.
SNAPSHOT_STEP = 1000
# A submission waits for the plan that places it while plans take at most this long.
QUICK_PLAN_S = 0.02


@dataclass(frozen=True)
class Ending:
    """How a running job ended, as its backend saw it."""

    exit_code: int | None
    reason: str  # Completed | Failed | DeadlineExceeded | Cancelled | Lost
    message: str = ""
    # What the job wrote, where the backend does not keep it itself (stored with the
    # ending): {"text", "truncated", "skipped_lines"}.
    output: Mapping[str, Any] | None = None


class ArtifactsUnavailable(Exception):
    """A backend keeps no artifacts for a job; the message says why, in plain words."""


class JobBackend(Protocol):
    """Where jobs run. `start` must not block long; an ending is reported through the
    `ended` callback the queue gives it.

    A backend whose own admission decides what runs and where (Kubernetes with Kueue)
    says so with `admits = True`: the queue then hands it every queued job at once (node
    None), the job stays queued until the backend calls the queue's `started(id, node)`,
    and positions come from the backend's `positions()` ({job id: 1-based position}).
    A backend that ends jobs at their deadline itself sets `deadline_grace_s` (or answers
    `deadline_grace(entry)` per job): the queue ends them only that long after the
    deadline, if the backend has not.
    A backend that runs some jobs somewhere the planner does not place (a cloud pod) says
    where with `elsewhere(entry)` (None for the others): those start at once, there,
    whatever this hub's nodes hold, and hold nothing on them.
    Optional: `recover()`, the entries the backend's own records hold (on Kubernetes the
    Jobs are the source of truth), merged into the store when the queue starts.

    Artifacts: every job process gets the environment variable THINKUBE_ARTIFACTS_DIR, a
    folder it writes what it produces into, kept after it ends; `artifacts_dir(entry)` says
    where this service reads that folder (see the method)."""

    name: str

    async def start(self, entry: Mapping[str, Any], request: JobRequest, node: str | None) -> dict:
        """Start the job on `node`; returns the backend's record of it (kept in the store).
        `entry["deadline_s"]` is how long the queue lets it run."""

    async def stop(self, entry: Mapping[str, Any], reason: str) -> Mapping[str, Any] | None:
        """End a running job now (its processes or pod), freeing what it holds; returns
        what it wrote (as `Ending.output`) when the backend keeps that only until then."""

    async def reattach(self, entry: Mapping[str, Any]) -> bool:
        """After a restart: follow a job the store says runs; False when it is gone."""

    def logs(
        self, entry: Mapping[str, Any], after: str | None, follow: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        """(event id, stream, text) after the event `after`; with `follow`, until the job
        ends. Event ids let a dropped stream resume without losing or repeating lines."""

    def artifacts_dir(self, entry: Mapping[str, Any]) -> Path | None:
        """Where the service reads the artifacts of a job that started: an absolute path
        without symbolic links in it (resolve the configured part, e.g. with
        os.path.realpath: every step is opened without following a link), which need not
        exist (a job that wrote nothing). None: this backend keeps none; or raise
        ArtifactsUnavailable with the reason, which the API answers with (404)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class QueueSettings:
    deadline_factor: float = 2.0  # a job is ended at this many times its expected time
    max_deadline_s: float = 14 * 86400
    tolerations: tuple[dict, ...] = ()  # what job pods tolerate, besides GPU nodes' taints
    gpu_taint_keys: tuple[str, ...] = ("nvidia.com/gpu",)
    debounce_s: float = 0.05
    # How soon the queue is planned again for submissions that cannot start before
    # something else changes (to refresh the estimates of everything waiting).
    refresh_s: float = 2.0
    # Waiting notebook servers: how long a request may wait, and the longest a server runs
    # (the basis of estimates of when servers' GPUs free; 0: none, no estimate from them).
    waiting_max_s: float = 8 * 3600.0
    server_max_age_s: float = 0.0
    # A waiting server the hub refused for lack of room (taken since the plan) is not tried
    # again for this long.
    server_retry_s: float = 2.0
    # Starts of a waiting server the hub may refuse or fail before the request ends.
    server_start_tries: int = 3


def request_of(entry: Mapping[str, Any]) -> JobRequest:
    """The checked request, as stored (the script is kept beside it)."""
    stored = dict(entry["request"])
    return JobRequest(
        script=entry.get("script") or "",
        script_name=stored["script_name"],
        expected_s=float(entry["expected_s"]),
        gpus=int(stored["gpus"]),
        gpu_model=stored.get("gpu_model"),
        gpu_resource=stored["gpu_resource"],
        cpu=float(stored["cpu"]),
        memory=int(stored["memory"]),
        image=stored["image"],
        name=entry.get("name") or "",
        project=entry.get("project") or "",
        metadata=entry.get("metadata") or {},
        priority=int(entry.get("priority") or 0),
        placement=stored.get("placement"),
    )


def _rented(entry: Mapping[str, Any]) -> bool:
    """Whether a job runs on a rented cloud GPU rather than this hub's."""
    return bool((entry.get("request") or {}).get("placement"))


def stored_request(request: JobRequest) -> dict[str, Any]:
    stored = {
        "script_name": request.script_name,
        "gpus": request.gpus,
        "gpu_model": request.gpu_model,
        "gpu_resource": request.gpu_resource,
        "cpu": request.cpu,
        "memory": request.memory,
        "image": dict(request.image),
    }
    if request.placement:
        stored["placement"] = dict(request.placement)
    return stored


class JobQueue:
    def __init__(
        self,
        store: JobStore,
        backend: JobBackend,
        documents: Callable[[], Sequence[Mapping[str, Any]]],
        settings: QueueSettings = QueueSettings(),
        run_db: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.time,
        counted: Callable[[], Mapping[str, str]] = dict,
        servers: ServerStarter | None = None,
        held_servers: Callable[[], Sequence[Mapping[str, Any]]] = tuple,
    ) -> None:
        self.store = store
        self.backend = backend
        self.documents = documents  # the inventory's node documents now
        self.counted = counted  # the jobs those documents count: job id -> node
        self.settings = settings
        self.clock = clock
        self._run_db = run_db
        self.plan = Plan()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._specs: dict[str, tuple[PodRules, dict[str, int]]] = {}
        self._waiting: dict[str, QueueEntry] = {}  # the planner's view of waiting entries
        self._next_deadline: float | None = None
        self.changed: list[Callable[[], None]] = []  # told after each plan
        # The queued and running entries, without their scripts (those stay in the store
        # until a job starts): what the planner works from and the queue's views read. Read
        # from the store once, at the start; kept since by this queue, its only writer.
        self.active: dict[str, dict[str, Any]] = {}
        self._planned = asyncio.Event()  # set, and replaced, after each plan
        self._plans_begun = 0
        self._plans_done = 0  # the number of the last plan made (plans are made one by one)
        self._waited_on = False  # a request waits for the next plan
        self.last_plan_s = 0.0  # how long making the last plan took (wall clock)
        # Queued entries the current plan has not seen (submitted since it began): id ->
        # (user, priority, order key against the current plan), in submission order.
        self._unplanned: dict[str, tuple[str, int, tuple]] = {}
        self._refresh: asyncio.TimerHandle | None = None
        # Submissions waiting to be stored, and the task storing them (one transaction for
        # all that came in while the last one was written: a commit is the slow part).
        self._to_add: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._adding: asyncio.Task | None = None
        # Waiting notebook servers: who starts them (the hub's REST API), the notebook
        # servers that hold GPUs now (the inventory's), the starts under way, and the
        # servers the hub refused for lack of room: id -> when to try again.
        self.servers = servers
        self.held_servers = held_servers
        self._server_starts: dict[str, asyncio.Task] = {}
        self._retry_at: dict[str, float] = {}

    async def db(self, fn, *args, **kwargs):
        if self._run_db is None:
            return fn(*args, **kwargs)
        return await self._run_db(lambda: fn(*args, **kwargs))

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def admits(self) -> bool:
        """Whether the backend's own admission decides what runs (see JobBackend)."""
        return bool(getattr(self.backend, "admits", False))

    async def start(self) -> None:
        # The whole queue as stored answers at once; following the running jobs again
        # (one request each on Kubernetes) comes after, a few at a time.
        for entry in await self.db(self.store.active):
            self._keep(entry)
        recover = getattr(self.backend, "recover", None)
        if recover is not None:
            try:
                await self._merge(await recover())
            except Exception as err:  # unreachable now: the store is all there is
                log.warning("jobs could not be recovered from %s: %s", self.backend.name, err)
        followed = []
        for entry in await self.db(self.store.active):
            self._keep(entry)
            if entry["kind"] == SERVER:
                if entry["status"] == RUNNING:  # its start was under way: follow it again
                    self._follow_server_start(entry, resumed=True)
                continue
            handed_over = entry["status"] == QUEUED and entry.get("placement")
            if entry["status"] == RUNNING or handed_over:
                followed.append(entry)
        at_once = asyncio.Semaphore(REATTACH_AT_ONCE)

        async def reattach(entry: Mapping[str, Any]) -> None:
            async with at_once:
                try:
                    there = await self.backend.reattach(entry)
                except Exception as err:  # not known now; its deadline still ends it
                    log.warning("job %s could not be followed again: %s", entry["id"], err)
                    return
                if not there:
                    await self._finish(
                        entry, LOST, "Lost", None, "the job was gone after a restart"
                    )

        await asyncio.gather(*(reattach(entry) for entry in followed))
        self._task = asyncio.create_task(self._run(), name="thinkube-job-queue")
        self.poke()

    async def _merge(self, recovered: Sequence[Mapping[str, Any]]) -> None:
        """Entries the backend knows and the store does not (a lost or older database) are
        added back as the backend describes them."""
        added = 0
        for entry in recovered:
            if await self.db(self.store.get, entry["id"]) is None:
                await self.db(self.store.add, entry)
                added += 1
        if added:
            log.warning(
                "%d job(s) found in %s but not in the database: added back",
                added,
                self.backend.name,
            )

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        await cancel_and_wait(self._task)
        await cancel_and_wait(self._adding)
        for task in list(self._server_starts.values()):
            await cancel_and_wait(task)
        self._task = self._adding = None
        closing = getattr(self.servers, "aclose", None)
        if closing is not None:
            await closing()
        await self.backend.close()

    def poke(self) -> None:
        """Something changed: plan again (soon, once)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # Woken by a change, or when the next running job's deadline comes.
            timeout = None if self._next_deadline is None else self._next_deadline - self.clock()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can hold a cancel back
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
                    await self._wake.wait()
            if not self._waited_on:
                # a burst of changes makes one plan; one that someone waits for is made now
                await asyncio.sleep(self.settings.debounce_s)
            self._waited_on = False
            self._wake.clear()
            try:
                await self.replan()
            except Exception:  # a failed pass must not stop the queue
                log.exception("planning the queue failed")

    # -- the plan ---------------------------------------------------------------------------

    def _spec(self, entry: Mapping[str, Any]) -> tuple[PodRules, dict[str, int]]:
        held = self._specs.get(entry["id"])
        if held is None and entry["kind"] == SERVER:
            spec = server_pod_of(entry)
            held = self._specs[entry["id"]] = (PodRules.of_pod_spec(spec), pod_demand(spec))
        if held is None:
            spec = job_pod_spec(
                request_of(entry),
                tolerations=self.settings.tolerations,
                gpu_taint_keys=self.settings.gpu_taint_keys,
            )
            held = self._specs[entry["id"]] = (PodRules.of_pod_spec(spec), pod_demand(spec))
        return held

    def _queue_entry(
        self, entry: Mapping[str, Any], rules: PodRules, demand: dict[str, int]
    ) -> QueueEntry:
        """The planner's view of a waiting entry: made once (what it holds does not change
        while it waits), not once per plan for every waiting entry."""
        made = self._waiting.get(entry["id"])
        if made is None:
            made = self._waiting[entry["id"]] = QueueEntry(
                entry["id"],
                entry["user"],
                entry["submitted_at"],
                self._expected_s(entry),
                demand,
                rules,
                entry["priority"],
                entry["kind"],
            )
        return made

    def _grace(self, entry: Mapping[str, Any]) -> float:
        """How long after its deadline the queue ends a running job (see JobBackend)."""
        per_job = getattr(self.backend, "deadline_grace", None)
        if per_job is not None:
            return float(per_job(entry))
        return float(getattr(self.backend, "deadline_grace_s", 0.0) or 0.0)

    def _elsewhere(self, entry: Mapping[str, Any]) -> str | None:
        """Where a job runs that the planner does not place (see JobBackend), or None."""
        if entry["kind"] == SERVER:
            return None  # a waiting server is always this queue's to place
        elsewhere = getattr(self.backend, "elsewhere", None)
        return elsewhere(entry) if elsewhere is not None else None

    def _expected_s(self, entry: Mapping[str, Any]) -> float:
        """How long it is expected to run once started; a server without a longest run
        set has no expected end (it holds what it takes until someone stops it)."""
        if entry["kind"] == SERVER:
            return self.settings.server_max_age_s or float("inf")
        return entry["expected_s"]

    def _running_of(
        self, entry: Mapping[str, Any], demand: Mapping[str, int], now: float
    ) -> Running:
        gpus = next((u for n, u in demand.items() if n.startswith("nvidia.com/")), 0)
        expected = self._expected_s(entry)
        return Running(
            entry["id"],
            entry["user"],
            entry["node"],
            entry["started_at"] or now,
            expected if expected != float("inf") else None,
            gpus,
        )

    def _servers_running(self, now: float) -> list[Running]:
        """Notebook servers holding GPUs that are not this queue's entries: each frees its
        GPUs at its start plus the longest a server runs, when that is set."""
        max_age = self.settings.server_max_age_s or None
        running = []
        for held in self.held_servers():
            if held.get("entry") in self.active:
                continue  # started from a waiting request: the queue counts it
            running.append(
                Running(
                    f"server:{held['id']}",
                    str(held.get("user") or ""),
                    held["node"],
                    held.get("started_at") or now,
                    max_age,
                    int(held.get("gpus") or 0),
                )
            )
        return running

    def gpus_held(self, user: str) -> int:
        """GPUs of this hub this person holds now: their notebook servers' and their running
        entries' (a job rented on RunPod holds none of them)."""
        held = sum(
            int(h.get("gpus") or 0)
            for h in self.held_servers()
            if h.get("user") == user and h.get("entry") not in self.active
        )
        for entry in self.active.values():
            if entry["user"] == user and entry["status"] == RUNNING and not _rented(entry):
                _, demand = self._spec(entry)
                held += next((u for n, u in demand.items() if n.startswith("nvidia.com/")), 0)
        return held

    def gpus_waiting(self, user: str) -> int:
        """GPUs this person's queued entries (jobs and servers) ask for."""
        total = 0
        for entry in self.active.values():
            if entry["user"] == user and entry["status"] == QUEUED and not _rented(entry):
                _, demand = self._spec(entry)
                total += next((u for n, u in demand.items() if n.startswith("nvidia.com/")), 0)
        return total

    async def _snapshot(self, active: Sequence[Mapping[str, Any]], now: float) -> tuple:
        """The planner's view of `active`: (waiting QueueEntries, Running — with notebook
        servers holding GPUs outside this queue —, what started work holds that the node
        documents do not count yet, [(entry, place)] of queued entries the planner does not
        place). Gives way to requests every SNAPSHOT_STEP."""
        waiting, running, assumed, elsewhere = [], [], [], []
        counted = self.counted()
        for index, entry in enumerate(active):
            if index % SNAPSHOT_STEP == SNAPSHOT_STEP - 1:
                await asyncio.sleep(0)  # a submission may come in: the next plan has it
            if entry["id"] not in self.active:
                continue  # ended meanwhile
            place = self._elsewhere(entry)
            if place is not None:
                # Not the planner's: started there now, holding nothing on this hub's nodes.
                if entry["status"] == QUEUED and not entry.get("placement"):
                    elsewhere.append((entry, place))
                continue
            rules, demand = self._spec(entry)
            if entry["status"] == QUEUED:
                waiting.append(self._queue_entry(entry, rules, demand))
            elif entry["node"]:
                if entry["id"] not in counted:
                    assumed.append((entry["node"], demand))
                running.append(self._running_of(entry, demand, now))
        running += self._servers_running(now)
        return waiting, running, assumed, elsewhere

    async def replan(self) -> Plan:
        self._plans_begun += 1
        number = self._plans_begun
        now = self.clock()
        for entry in list(self.active.values()):
            deadline = entry["deadline_at"]
            if entry["kind"] == SERVER:
                if entry["status"] == QUEUED and deadline and deadline <= now:
                    await self._finish(entry, CANCELLED, EXPIRED, None, self._expired_text(entry))
                continue
            if entry["status"] == RUNNING and deadline and deadline + self._grace(entry) <= now:
                await self._end_now(entry, FAILED, "DeadlineExceeded", "ran past its deadline")
        began = time.perf_counter()
        active = list(self.active.values())
        deadlines = [
            e["deadline_at"] + self._grace(e)
            for e in active
            if e["status"] == RUNNING and e["deadline_at"] and e["kind"] != SERVER
        ]
        # a waiting server's expiry, and the retry of one the hub refused
        deadlines += [
            e["deadline_at"]
            for e in active
            if e["status"] == QUEUED and e["kind"] == SERVER and e["deadline_at"]
        ]
        deadlines += [at for at in self._retry_at.values() if at > now]
        if self.admits:
            # The backend's admission decides: hand it what it does not have yet (waiting
            # servers are this queue's own, planned below; cloud jobs are not its).
            active = [
                await self._hand_over(e)
                if e["status"] == QUEUED
                and not e.get("placement")
                and e["kind"] != SERVER
                and not self._elsewhere(e)
                else e
                for e in active
            ]
            active = [e for e in active if e["status"] in ACTIVE]
        waiting, running, assumed, elsewhere = await self._snapshot(active, now)
        nodes = with_assumed(self.documents(), assumed)
        if self.admits:
            # No placement of ours: the waiting in the backend's order (its positions),
            # those it has not placed yet after them in ours. Waiting servers are planned
            # by this queue, and started when they fit.
            servers = [e for e in waiting if e.kind == SERVER]
            served = await self._plan_and_start(servers, running, nodes, now, deadlines)
            theirs = self.backend.positions() if hasattr(self.backend, "positions") else {}
            order = [e.id for e in queue_order(waiting) if e.id in self.active]
            order = [i for i in order if self.active[i]["status"] == QUEUED]
            order.sort(key=lambda i: (i not in theirs, theirs.get(i, 0)))
            self.plan = Plan(order=order, positions={e: i + 1 for i, e in enumerate(order)})
            self.plan.expected_node.update(served.expected_node)
            self.plan.eta.update(served.eta)
            self.plan.gpu_free_at = served.gpu_free_at
            self.last_plan_s = time.perf_counter() - began
        else:
            steps = planning(waiting, running, nodes, now)
            starting_s = 0.0  # not counted in how long planning took
            while True:
                try:
                    starts = next(steps)
                except StopIteration as made:
                    self.plan = made.value
                    break
                if starts:  # what starts now is decided: started before the estimates
                    began_starting = time.perf_counter()
                    for queued, node in starts:
                        entry = self.active.get(queued.id)
                        if entry is not None:  # not cancelled meanwhile
                            deadline = await self._start(entry, node)
                            if deadline and entry["kind"] != SERVER:
                                deadlines.append(deadline + self._grace(entry))
                            await asyncio.sleep(0)
                    starting_s = time.perf_counter() - began_starting
                await asyncio.sleep(0)
            self.last_plan_s = time.perf_counter() - began - starting_s
        self._placed({e.id for e in waiting} | {e["id"] for e, _ in elsewhere})
        for entry, place in elsewhere:  # not the planner's: started there, now
            if entry["id"] in self.active:  # not cancelled meanwhile
                deadline = await self._start(self.active[entry["id"]], place)
                deadlines.append(deadline + self._grace(entry) if deadline else None)
        self._next_deadline = min((d for d in deadlines if d), default=None)
        self._plans_done = number
        planned, self._planned = self._planned, asyncio.Event()
        planned.set()
        for callback in self.changed:
            callback()
        return self.plan

    async def _plan_and_start(
        self,
        waiting: Sequence[QueueEntry],
        running: Sequence[Running],
        nodes: Sequence[Mapping[str, Any]],
        now: float,
        deadlines: list,
    ) -> Plan:
        """Plan these entries alone and start what fits now (waiting servers, beside a
        backend that admits jobs itself)."""
        steps = planning(waiting, running, nodes, now)
        while True:
            try:
                starts = next(steps)
            except StopIteration as made:
                return made.value
            for queued, node in starts or ():
                if queued.id in self.active:
                    deadlines.append(await self._start(self.active[queued.id], node))
            await asyncio.sleep(0)

    def _placed(self, planned: set[str]) -> None:
        """A new plan is in place: what it saw is no longer unplanned; what came in while
        it was made is placed again against it, in submission order."""
        later = [(i, user, priority) for i, (user, priority, _) in self._unplanned.items()]
        self._unplanned = {}
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        startable = False
        for entry_id, user, priority in later:
            if entry_id not in planned and entry_id in self.active:
                self._place_unplanned(entry_id, user, priority)
                waiting = self._waiting.get(entry_id)
                key = self._unplanned[entry_id][2]
                startable |= waiting is None or self.plan.could_start(waiting, key)
        if startable:
            self.poke()  # this plan may have left room it could take
        elif self._unplanned:
            self._refresh_soon()

    def _place_unplanned(self, entry_id: str, user: str, priority: int) -> None:
        entry = self.active[entry_id]
        key = self.plan.later_key(user, priority, entry["submitted_at"], entry_id)
        # Their own entries submitted since the plan, at this priority or above, come first.
        before = sum(1 for u, p, _ in self._unplanned.values() if u == user and p >= priority)
        key = (key[0], key[1] + before, *key[2:])
        self._unplanned[entry_id] = (user, priority, key)

    @property
    def plans_made(self) -> int:
        return self._plans_done

    @property
    def plans_are_quick(self) -> bool:
        """Whether a submission may wait for the next plan to answer with where it stands
        (small queues); with large ones it answers from the last plan (see the module)."""
        return self.last_plan_s <= QUICK_PLAN_S

    def waiting_order(self) -> list[str]:
        """The queued entries' ids in queue order: the last plan's, with those submitted
        since at their places."""
        ordered = [i for i in self.plan.order if i in self.active]
        if not self._unplanned:
            return ordered
        later = sorted(self._unplanned.items(), key=lambda item: item[1][2])
        if self.admits or not self.plan.order_keys:
            return ordered + [i for i, _ in later]
        keyed = zip(self.plan.order_keys, self.plan.order, strict=True)
        merged = heapq.merge(keyed, ((k, i) for i, (_, _, k) in later))
        return [i for _, i in merged if i in self.active]

    def _unplanned_position(self, entry_id: str) -> int | None:
        held = self._unplanned.get(entry_id)
        if held is None:
            return None
        key = held[2]
        if self.admits or not self.plan.order_keys:
            return len(self.plan.order) + list(self._unplanned).index(entry_id) + 1
        earlier = sum(1 for _, _, k in self._unplanned.values() if k < key)
        return self.plan.place_of(key) + earlier + 1

    async def next_plan(self, within_s: float) -> bool:
        """Wait for the plan made after this call (a submission's position is in it);
        False when none came within `within_s` seconds."""
        wanted = self._plans_begun + 1  # a plan begun before now may not have seen the change
        self._waited_on = True
        self.poke()
        try:
            async with asyncio.timeout(within_s):
                while self._plans_done < wanted:
                    await self._planned.wait()
        except TimeoutError:
            return False
        return True

    async def preview(self, user: str, request: JobRequest) -> dict[str, Any]:
        """Where `request` would stand if `user` submitted it now, from a plan made with it
        added; nothing is queued or started. `{"node"}` (it would start there now), else
        `{"position", "expected_node", "eta"}`."""
        now = self.clock()
        spec = job_pod_spec(
            request,
            tolerations=self.settings.tolerations,
            gpu_taint_keys=self.settings.gpu_taint_keys,
        )
        rules, demand = PodRules.of_pod_spec(spec), pod_demand(spec)
        candidate = QueueEntry(
            "preview", user, now, request.expected_s, demand, rules, request.priority
        )
        active = list(self.active.values())
        if self.admits:  # the backend's admission decides: behind all that waits
            waiting = sum(1 for e in active if e["status"] == QUEUED)
            return {"node": None, "position": waiting + 1, "expected_node": None, "eta": None}
        waiting, running, assumed, _ = await self._snapshot(active, now)
        waiting.insert(0, candidate)
        steps = planning(waiting, running, with_assumed(self.documents(), assumed), now)
        while True:
            try:
                next(steps)
            except StopIteration as made:
                plan = made.value
                break
            await asyncio.sleep(0)
        node = next((n for queued, n in plan.start if queued.id == candidate.id), None)
        if node is not None:
            return {"node": node, "position": None, "expected_node": node, "eta": None}
        return {
            "node": None,
            "position": plan.positions.get(candidate.id),
            "expected_node": plan.expected_node.get(candidate.id),
            "eta": plan.eta.get(candidate.id),
        }

    def run_time_allowed(self, entry: Mapping[str, Any]) -> float:
        """Seconds a job may run: its expected time times the deadline factor, capped."""
        return min(
            entry["expected_s"] * self.settings.deadline_factor, self.settings.max_deadline_s
        )

    async def _start(self, entry: Mapping[str, Any], node: str) -> float | None:
        """Start it there; the deadline it runs under (None when it could not start)."""
        if entry["kind"] == SERVER:
            return await self._start_server(entry, node)
        now = self.clock()
        allowed = self.run_time_allowed(entry)
        deadline = now + allowed
        try:
            full = await self.db(self.store.get, entry["id"])  # with its script
            if full is None:
                raise RuntimeError("it is no longer in the database")
            record = await self.backend.start(
                {**full, "deadline_s": allowed}, request_of(full), node
            )
        except Exception as err:  # the backend refused: the job fails with its reason
            if getattr(err, "busy", False):
                # taken since the plan was made (a server starting): it keeps its place
                log.info("job %s waits: %s", entry["id"], err)
                return None
            log.warning("job %s could not start on %s: %s", entry["id"], node, err)
            await self._finish(entry, FAILED, "Failed", None, f"could not start: {err}")
            return None
        updated = await self.db(
            self.store.update,
            entry["id"],
            status=RUNNING,
            started_at=now,
            node=node,
            deadline_at=deadline,
            placement=record,
        )
        if updated is not None and entry["id"] in self.active:
            self._keep(updated)
        log.info("job %s of %s started on %s", entry["id"], entry["user"], node)
        return deadline

    # -- waiting notebook servers ----------------------------------------------------------

    async def _start_server(self, entry: Mapping[str, Any], node: str) -> None:
        """The planner says a waiting server fits: it is marked starting (its room is
        assumed taken from now on) and the hub is asked to start it, off the plan's path
        (the hub answers once the spawn is under way or a few seconds have passed)."""
        if self.servers is None:
            return None
        if self._retry_at.get(entry["id"], 0.0) > self.clock():
            return None  # the hub refused it for lack of room a moment ago
        updated = await self.db(
            self.store.update,
            entry["id"],
            status=RUNNING,
            started_at=self.clock(),
            node=node,
            placement={**(entry.get("placement") or {}), "starting": True},
        )
        if updated is None or entry["id"] not in self.active:
            return None
        self._keep(updated)
        log.info("server %s of %s fits on %s: starting it", entry["id"], entry["user"], node)
        self._follow_server_start(updated, resumed=False)
        return None

    def _follow_server_start(self, entry: Mapping[str, Any], resumed: bool) -> None:
        task = asyncio.create_task(
            self._bring_up(entry, resumed), name=f"thinkube-server-{entry['id']}"
        )
        self._server_starts[entry["id"]] = task
        task.add_done_callback(lambda _: self._server_starts.pop(entry["id"], None))

    async def _bring_up(self, entry: Mapping[str, Any], resumed: bool) -> None:
        """Start the server through the hub and follow it until it is up or refused."""
        assert self.servers is not None
        request = entry["request"]
        try:
            if resumed:
                outcome = await self.servers.resume(entry)
            else:
                outcome = await self.servers.start(entry)
            if outcome.pending:
                outcome = await self.servers.follow(entry)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the hub unreachable: it goes back to waiting
            log.warning("server %s could not be started: %s", entry["id"], err)
            outcome = None
        current = self.active.get(entry["id"])
        if current is None or current["status"] != RUNNING:
            return  # cancelled meanwhile
        label = request.get("label") or "a GPU"
        if outcome is not None and outcome.ready:
            await self._finish(current, COMPLETED, STARTED, None, f"started on {label}")
        elif outcome is not None and outcome.superseded:
            await self._finish(current, CANCELLED, "Superseded", None, outcome.message)
        else:
            # Refused (taken since the plan), failed, or the hub could not be asked: it
            # waits again at its place and is tried again after a moment, a few times.
            failed = int((current.get("placement") or {}).get("failed_starts") or 0)
            after = after_failed_start(outcome, failed, self.settings.server_start_tries)
            if not after.waits_again:
                await self._finish(current, FAILED, "Failed", None, after.message)
                return
            self._retry_at[entry["id"]] = self.clock() + self.settings.server_retry_s
            updated = await self.db(
                self.store.update,
                entry["id"],
                status=QUEUED,
                started_at=None,
                node=None,
                placement={"failed_starts": after.failed_starts},
                message=after.message,
            )
            if updated is not None and entry["id"] in self.active:
                self._keep(updated)
                self._place_unplanned(entry["id"], entry["user"], entry["priority"])
            self.poke()

    @staticmethod
    def _expired_text(entry: Mapping[str, Any]) -> str:
        label = (entry.get("request") or {}).get("label") or "a GPU"
        waited = (entry["deadline_at"] or 0) - entry["submitted_at"]
        if waited >= 3600:
            took = f"{waited / 3600:g} h"
        else:
            took = f"{round(waited / 60)} min" if waited >= 60 else f"{round(waited)} s"
        return (
            f"Waited {took} for {label}, the longest a request may wait on this hub: it has "
            "left the queue and nothing was started. Start again from the spawn form to wait "
            "again."
        )

    async def submit_waiting(self, user: str, request: WaitingRequest) -> dict:
        """Queue a notebook server that waits for its place (kind "server")."""
        now = self.clock()
        entry = {
            "id": f"s-{secrets.token_hex(6)}",
            "kind": SERVER,
            "user": user,
            "name": request.server_name,
            "project": "",
            "status": QUEUED,
            "priority": 0,
            "request": stored_waiting_request(request),
            "script": "",
            "metadata": {},
            "expected_s": self.settings.server_max_age_s,
            "submitted_at": now,
            "deadline_at": now + self.settings.waiting_max_s,
        }
        stored = await self._add(entry)
        self._keep(stored)
        self._place_unplanned(stored["id"], user, 0)
        self.poke()
        return stored

    def join_estimates(self) -> dict[str, Any]:
        """Per GPU model and node: how many wait, and when a request for one GPU joining now
        could expect one (`waiting.join_estimates`), from the last plan."""
        waiting = [
            self._queue_entry(e, *self._spec(e))
            for e in self.active.values()
            if e["status"] == QUEUED
        ]
        return join_estimates(self.plan, waiting, self.documents(), self.clock())

    def waiting_server(self, user: str, server_name: str) -> dict[str, Any] | None:
        """This person's waiting (or starting) request for this server, if any."""
        return next(
            (
                e
                for e in self.active.values()
                if e["kind"] == SERVER and e["user"] == user and e["name"] == server_name
            ),
            None,
        )

    async def _hand_over(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Give a queued job to a backend that admits it itself; it stays queued (with the
        backend's record as its placement) until the backend says it started. The entry
        as it is now."""
        try:
            full = await self.db(self.store.get, entry["id"])  # with its script
            if full is None:
                raise RuntimeError("it is no longer in the database")
            record = await self.backend.start(
                {**full, "deadline_s": self.run_time_allowed(full)}, request_of(full), None
            )
        except Exception as err:
            log.warning("job %s could not be handed to %s: %s", entry["id"], self.backend.name, err)
            return await self._finish(entry, FAILED, "Failed", None, f"could not start: {err}")
        updated = await self.db(
            self.store.update, entry["id"], placement=record or {"handed_over": True}
        )
        if updated is not None and entry["id"] in self.active:
            self._keep(updated)
        return self.active.get(entry["id"]) or dict(entry)

    async def started(self, entry_id: str, node: str | None) -> None:
        """A backend's report: a job it admitted itself now runs (on `node`)."""
        entry = await self.db(self.store.get, entry_id)
        if entry is None or entry["status"] != QUEUED:
            return
        now = self.clock()
        updated = await self.db(
            self.store.update,
            entry_id,
            status=RUNNING,
            started_at=now,
            node=node,
            deadline_at=now + self.run_time_allowed(entry),
        )
        if updated is not None and entry_id in self.active:
            self._keep(updated)
        log.info("job %s of %s started on %s", entry_id, entry["user"], node)
        self.poke()

    # -- submissions, endings ---------------------------------------------------------------

    async def submit(self, user: str, request: JobRequest, kind: str = "job") -> dict:
        entry = {
            "id": f"{kind[0]}-{secrets.token_hex(6)}",
            "kind": kind,
            "user": user,
            "name": request.name,
            "project": request.project,
            "status": QUEUED,
            "priority": request.priority,
            "request": stored_request(request),
            "script": request.script,
            "metadata": dict(request.metadata),
            "expected_s": request.expected_s,
            "submitted_at": self.clock(),
        }
        stored = await self._add(entry)
        self._keep(stored)
        self._place_unplanned(stored["id"], user, request.priority)
        waiting = self._queue_entry(stored, *self._spec(stored))
        if self.admits or self.plan.could_start(waiting, self._unplanned[stored["id"]][2]):
            self.poke()
        else:
            # One of its kind ahead of it waits already: a plan could not start it now,
            # and planning 10,000 waiting entries for each submission would be the
            # service's whole work. Its estimates follow soon.
            self._refresh_soon()
        return stored

    async def _add(self, entry: dict[str, Any]) -> dict[str, Any]:
        added = asyncio.get_running_loop().create_future()
        self._to_add.append((entry, added))
        if self._adding is None or self._adding.done():
            self._adding = asyncio.create_task(self._add_waiting(), name="thinkube-job-store")
        return await added

    async def _add_waiting(self) -> None:
        while self._to_add:
            batch, self._to_add = self._to_add, []
            try:
                stored = await self.db(self.store.add_many, [entry for entry, _ in batch])
            except Exception as err:  # each submission sees the store's failure
                for _, added in batch:
                    if not added.done():
                        added.set_exception(err)
                continue
            for (_, added), row in zip(batch, stored, strict=True):
                if not added.done():
                    added.set_result(row)

    def _refresh_soon(self) -> None:
        if self._refresh is None:
            self._refresh = asyncio.get_running_loop().call_later(
                self.settings.refresh_s, self._refresh_now
            )

    def _refresh_now(self) -> None:
        self._refresh = None
        self.poke()

    def _keep(self, entry: Mapping[str, Any]) -> None:
        kept = dict(entry)
        kept.pop("script", None)
        self.active[entry["id"]] = kept
        if kept["status"] != QUEUED:
            self._waiting.pop(entry["id"], None)
            self._unplanned.pop(entry["id"], None)

    async def ended(self, entry_id: str, ending: Ending) -> None:
        """A backend's report: the job ended by itself (or was lost)."""
        entry = await self.db(self.store.get, entry_id)
        if entry is None or entry["status"] not in ACTIVE:
            return
        status = (
            COMPLETED
            if ending.reason == "Completed"
            else LOST
            if ending.reason == "Lost"
            else FAILED
        )
        await self._finish(
            entry, status, ending.reason, ending.exit_code, ending.message, ending.output
        )

    async def cancel(self, entry: Mapping[str, Any]) -> dict:
        """Idempotent: a queued job leaves the queue, a running one is ended now. A waiting
        server leaves the queue; one the hub is starting is the hub's (stopped there)."""
        if entry["kind"] == SERVER:
            if entry["status"] == QUEUED:
                return await self._finish(entry, CANCELLED, "Cancelled", None, "left the queue")
            return dict(entry)
        if entry["status"] == RUNNING:
            return await self._end_now(entry, CANCELLED, "Cancelled", "cancelled")
        if entry["status"] == QUEUED and (entry.get("placement") or self.admits):
            # Handed to the backend (or being handed over now): it must end it there.
            return await self._end_now(entry, CANCELLED, "Cancelled", "cancelled while queued")
        if entry["status"] == QUEUED:
            return await self._finish(entry, CANCELLED, "Cancelled", None, "cancelled while queued")
        return dict(entry)

    async def _end_now(self, entry: Mapping[str, Any], status: str, reason: str, message: str):
        output = None
        try:
            output = await self.backend.stop(entry, reason)
        except Exception as err:
            log.warning("job %s: the backend could not end it: %s", entry["id"], err)
        return await self._finish(entry, status, reason, None, message, output)

    async def _finish(self, entry, status, reason, exit_code, message, output=None) -> dict:
        changes: dict[str, Any] = {"exit_code": exit_code, "message": message}
        if output:
            changes["output"] = dict(output)
        finished = await self.db(
            self.store.finish, entry["id"], status, reason, self.clock(), **changes
        )
        self._specs.pop(entry["id"], None)
        self._waiting.pop(entry["id"], None)
        self._unplanned.pop(entry["id"], None)
        self._retry_at.pop(entry["id"], None)
        self.active.pop(entry["id"], None)
        what = "server" if entry.get("kind") == SERVER else "job"
        log.info("%s %s of %s ended: %s", what, entry["id"], entry["user"], reason)
        self.poke()
        return finished or dict(entry)

    # -- views ------------------------------------------------------------------------------

    def where(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Where a job stands: its position, the place it is expected to run, an estimate.
        Positions count entries submitted since the last plan (those of people who raised
        their own priority since may move their other entries back at the next plan)."""
        entry_id = entry["id"]
        if entry["status"] != QUEUED:
            return {"position": None, "expected_node": entry.get("node"), "eta": None}
        positions = getattr(self.backend, "positions", None) if self.admits else None
        if positions is not None and entry.get("kind") != SERVER:
            # The backend's admission orders the queue; it gives no estimate.
            return {"position": positions().get(entry_id), "expected_node": None, "eta": None}
        if entry_id not in self.plan.positions and entry_id in self._unplanned:
            # Submitted since the last plan: its place in that plan's order, nothing more.
            return {
                "position": self._unplanned_position(entry_id),
                "expected_node": None,
                "eta": None,
            }
        position = self.plan.positions.get(entry_id)
        if position is None and entry_id in self._retry_at:
            # A waiting server the plan starts, held back a moment after a failed start:
            # nothing is ahead of it.
            return {
                "position": 1,
                "expected_node": self.plan.expected_node.get(entry_id),
                "eta": self._retry_at[entry_id],
            }
        if position is not None and self._unplanned and self.plan.order_keys:
            # entries submitted since the plan that come before it
            key = self.plan.order_keys[position - 1]
            position += sum(1 for _, _, k in self._unplanned.values() if k < key)
        return {
            "position": position,
            "expected_node": self.plan.expected_node.get(entry_id),
            "eta": self.plan.eta.get(entry_id),
        }
