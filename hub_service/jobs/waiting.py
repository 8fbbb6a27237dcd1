"""Notebook servers waiting for a GPU in the hub's one queue: the request checked, the caps,
the answers' shapes, and where a request joining now would stand. Pure (the hub's REST
API, which starts the servers, is `hub_servers.py`'s).

A waiting request is a queue entry of kind "server", owned by the person, holding the full
spawn choice: the server's name, `user_options` as the spawner takes them, and the pod the
choice makes as the feasibility filter reads it (`thinkube_core.waiting.scheduling_view`).
It competes with GPU jobs in the same order (`queue.py`). When the filter says it fits,
the queue starts it through the hub with those options, and the spawner checks the choice
as at any start: one that no longer fits goes back to waiting, at its place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thinkube_core.accounting import MalformedObject
from thinkube_core.scheduling import PodRules, capacity_reason, pod_demand, rules_reason
from thinkube_core.waiting import QUEUE_ENTRY_OPTION, WAIT_OPTION, eta_text

from .queue import Plan, QueueEntry
from .spec import JobError
from .store import CANCELLED, COMPLETED, FAILED, LOST, QUEUED, RUNNING
from .views import iso

__all__ = [
    "EXPIRED",
    "SERVER",
    "STARTED",
    "ServerStarter",
    "AfterFailedStart",
    "StartOutcome",
    "WaitingLimits",
    "WaitingRequest",
    "after_failed_start",
    "check_waiting_request",
    "gpu_cap_problem",
    "join_estimates",
    "limit_problem",
    "server_pod_of",
    "stored_waiting_request",
    "waiting_status",
    "waiting_event",
    "waiting_view",
]

SERVER = "server"  # the queue entry's kind
STARTED, EXPIRED = "Started", "Expired"  # reasons a waiting request ended with
ESTIMATE_BASIS = (
    "an estimate: the expected ends of the running jobs and, where the admin set the longest "
    "a server runs, of the notebook servers holding the GPUs"
)
MAX_SERVER_NAME = 255
MAX_OPTIONS = 32
MAX_OPTION_TEXT = 256
MAX_LABEL = 200
MAX_CLOUD_CAP = 10_000.0  # USD/h: above any GPU machine's price


@dataclass(frozen=True)
class WaitingRequest:
    """A checked request to wait for a place."""

    server_name: str
    user_options: dict[str, str]
    pod: dict[str, Any]  # the pod's spec as the filter reads it
    label: str  # what it waits for, for people: "NVIDIA A100 SXM4 80GB (any node)"
    gpu_resource: str
    gpus: int
    # What a cloud offer instead must match: the person's cloud price cap in USD/h (0: no
    # cloud for them) and the memory of the chosen lab GPU (None: unknown). The spawner's
    # check at submit checks a cloud start against the cap again: this only picks the offer
    # the waiting page shows.
    cloud_cap: float = 0.0
    gpu_memory_mib: int | None = None


def _text(value: Any, what: str, field_name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise JobError(field_name, f"{what} must be text")
    if len(value) > limit:
        raise JobError(field_name, f"{what} is longer than {limit} characters")
    return value


def check_waiting_request(body: Any, nodes: Sequence[Mapping[str, Any]]) -> WaitingRequest:
    """The request a spawner registers (`POST api/v1/waiting`), checked: JobError names what
    is wrong. The pod must ask for GPUs, and some node must be able to hold it once what
    runs there ends (the filter's rules, and the node's allocatable room)."""
    if not isinstance(body, Mapping):
        raise JobError(None, "the body must be a JSON object")
    unknown = sorted(set(body) - {"server_name", "user_options", "pod", "label", "cloud"})
    if unknown:
        raise JobError(unknown[0][:60], f"unknown field {unknown[0][:60]!r}")
    server_name = _text(body.get("server_name", ""), "server_name", "server_name", MAX_SERVER_NAME)
    options = body.get("user_options")
    if not isinstance(options, Mapping) or not options:
        raise JobError("user_options", "user_options must be the spawn choice, an object")
    if len(options) > MAX_OPTIONS:
        raise JobError("user_options", f"user_options has more than {MAX_OPTIONS} keys")
    checked: dict[str, str] = {}
    for key, value in options.items():
        _text(key, "a user_options key", "user_options", 64)
        if key in (WAIT_OPTION, QUEUE_ENTRY_OPTION):
            raise JobError("user_options", f"user_options may not set {key!r}: it is the queue's")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise JobError("user_options", f"user_options[{key!r}] must be text or a number")
        checked[key] = _text(str(value), f"user_options[{key!r}]", "user_options", MAX_OPTION_TEXT)
    label = _text(body.get("label") or "a GPU", "label", "label", MAX_LABEL)
    pod = body.get("pod")
    if not isinstance(pod, Mapping):
        raise JobError("pod", "pod must be the server pod's spec (what the scheduler reads)")
    try:
        rules, demand = PodRules.of_pod_spec(pod), pod_demand(pod)
    except MalformedObject as err:
        raise JobError("pod", f"the pod cannot be read: {err}") from None
    except Exception:  # any other shape the accounting cannot read
        raise JobError("pod", "the pod cannot be read") from None
    resource = next((n for n, u in demand.items() if n.startswith("nvidia.com/") and u > 0), None)
    if resource is None:
        raise JobError("pod", "waiting is for GPU servers: this pod asks for no GPU")
    reasons = {n["name"]: capacity_reason(rules, demand, n) for n in nodes}
    if not any(reason is None for reason in reasons.values()):
        counts: dict[str, int] = {}
        for reason in reasons.values():
            counts[str(reason)] = counts.get(str(reason), 0) + 1
        top = "; ".join(
            f"{count} node{'s' if count != 1 else ''}: {reason}"
            for reason, count in sorted(counts.items(), key=lambda item: -item[1])[:2]
        )
        raise JobError(
            "pod",
            "no node could ever hold this server, even with everything else stopped"
            + (f" ({top})" if top else " (there are no nodes)"),
        )
    cap, gpu_memory = _checked_cloud(body.get("cloud"))
    return WaitingRequest(
        server_name,
        checked,
        json.loads(json.dumps(pod)),
        label,
        resource,
        demand[resource],
        cap,
        gpu_memory,
    )


def _checked_cloud(value: Any) -> tuple[float, int | None]:
    """The request's `cloud` field: `{"cap": USD/h, "gpu_memory_mib": MiB or null}`, both
    optional; absent: no cloud offer instead."""
    if value is None:
        return 0.0, None
    if not isinstance(value, Mapping):
        raise JobError("cloud", 'cloud must be an object: {"cap": 0.5, "gpu_memory_mib": 81920}')
    unknown = sorted(set(value) - {"cap", "gpu_memory_mib"})
    if unknown:
        raise JobError("cloud", f"unknown cloud field {str(unknown[0])[:60]!r}")
    cap = value.get("cap", 0)
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not 0 <= cap <= MAX_CLOUD_CAP:
        raise JobError("cloud", f"cloud.cap must be a price in USD/h from 0 to {MAX_CLOUD_CAP:g}")
    memory = value.get("gpu_memory_mib")
    if memory is not None and (
        isinstance(memory, bool) or not isinstance(memory, int) or not 0 < memory < 2**31
    ):
        raise JobError("cloud", "cloud.gpu_memory_mib must be a whole number of MiB, or null")
    return float(cap), memory


def stored_waiting_request(request: WaitingRequest) -> dict[str, Any]:
    """What the queue's store keeps of it (`request`); `gpus` and `gpu_model` as jobs keep
    them, so the queue's views show what it waits for."""
    return {
        "server_name": request.server_name,
        "user_options": dict(request.user_options),
        "pod": request.pod,
        "label": request.label,
        "gpu_resource": request.gpu_resource,
        "gpus": request.gpus,
        "gpu_model": request.label,
        "cloud": {"cap": request.cloud_cap, "gpu_memory_mib": request.gpu_memory_mib},
    }


def server_pod_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    return dict((entry.get("request") or {}).get("pod") or {})


# -- caps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitingLimits:
    """The admin's caps, checked when a request joins the queue. Per person; a group's
    value applies to each of its members (a person in several groups gets the largest)."""

    max_waiting: int = 2  # waiting requests at once; 0: nobody may wait
    max_gpus: int = 0  # GPUs held at once, notebooks and jobs, waiting included; 0: no cap
    waiting_per_group: Mapping[str, int] = field(default_factory=dict)
    gpus_per_group: Mapping[str, int] = field(default_factory=dict)

    def for_groups(self, groups: Iterable[str]) -> tuple[int, int]:
        groups = list(groups)
        waiting = [self.waiting_per_group[g] for g in groups if g in self.waiting_per_group]
        gpus = [self.gpus_per_group[g] for g in groups if g in self.gpus_per_group]
        return (
            max(waiting) if waiting else self.max_waiting,
            (0 if 0 in gpus else max(gpus)) if gpus else self.max_gpus,
        )


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def limit_problem(
    limits: WaitingLimits,
    groups: Iterable[str],
    waiting_requests: int,
    gpus_held: int,
    gpus_waiting: int,
    gpus_asked: int,
) -> str | None:
    """Why this person may not join the queue with this request, in words; None if they
    may. `waiting_requests` counts their waiting servers, `gpus_held` the GPUs their
    servers and jobs hold, `gpus_waiting` what their other queued entries ask for."""
    groups = list(groups)
    max_waiting, _ = limits.for_groups(groups)
    if max_waiting <= 0:
        return "Waiting for a GPU is not open to you on this hub; please ask the hub's admin."
    if waiting_requests >= max_waiting:
        return (
            f"You already wait for {_count(waiting_requests, 'server')}, the most this hub "
            "allows at once: leave one of those queues to wait for another."
        )
    return gpu_cap_problem(limits, groups, gpus_held, gpus_waiting, gpus_asked)


def gpu_cap_problem(
    limits: WaitingLimits,
    groups: Iterable[str],
    gpus_held: int,
    gpus_waiting: int,
    gpus_asked: int,
    asking: str = "this server",
) -> str | None:
    """Why `asking` ("this server", "this job") would take this person over their cap on
    GPUs held at once, in words; None when it would not (or there is no cap). The one
    check of that cap: at a waiting server's queue entry and at a GPU job's submission."""
    _, max_gpus = limits.for_groups(groups)
    total = gpus_held + gpus_waiting + gpus_asked
    if not max_gpus or not gpus_asked or total <= max_gpus:
        return None
    parts = [f"hold {_count(gpus_held, 'GPU')} (notebook servers and jobs)"]
    if gpus_waiting:
        parts.append(f"wait for {gpus_waiting} more")
    return (
        f"You {' and '.join(parts)}; {asking}'s {gpus_asked} would make {total}, over "
        f"your limit of {_count(max_gpus, 'GPU')} at once. Stop a server or end a job first."
    )


# -- starting a waiting server -----------------------------------------------------------------


@dataclass(frozen=True)
class StartOutcome:
    """What the hub said to a start: up (`ready`), under way (`pending`), no room after all
    or the hub not answering (`retry`), started another way meanwhile (`superseded`), else
    refused or failed; `message` says why, in the hub's words. Any but ready, pending and
    superseded puts the request back at its place, a few times (`after_failed_start`)."""

    ready: bool = False
    pending: bool = False
    retry: bool = False
    superseded: bool = False
    message: str = ""


@dataclass(frozen=True)
class AfterFailedStart:
    """What a start that did not bring the server up does to its request: it waits again at
    its place (`waits_again`), or, after `failed_starts` reached the most allowed, ends
    with `message`."""

    waits_again: bool
    failed_starts: int
    message: str


def after_failed_start(
    outcome: StartOutcome | None, failed_starts: int, most: int
) -> AfterFailedStart:
    """A start the hub refused or that failed (`outcome`), or that could not be asked
    (None: the hub unreachable, which is not counted): back in the queue at its place, up
    to `most` failed starts in all; the last ends the request with the hub's reason."""
    if outcome is None:
        return AfterFailedStart(
            True, failed_starts, "The hub could not be asked to start it; it waits again."
        )
    reason = (outcome.message or "the hub did not say why").strip()
    if reason[-1:] not in ".!?":
        reason += "."
    reason = reason[:1].upper() + reason[1:]
    failed = failed_starts + 1
    if failed >= most:
        tries = "once" if failed == 1 else f"{failed} times"
        return AfterFailedStart(
            False,
            failed,
            f"The hub was asked {tries} to start it and could not: {reason} "
            "It has left the queue; start again from the spawn form to wait again.",
        )
    return AfterFailedStart(
        True, failed, f"Not started yet: {reason} It waits again, at its place."
    )


class ServerStarter(Protocol):
    """Starts waiting servers (the hub's REST API, `hub_servers.HubServers`)."""

    async def start(self, entry: Mapping[str, Any]) -> StartOutcome: ...

    async def follow(self, entry: Mapping[str, Any]) -> StartOutcome:
        """Until a pending start is up or failed."""

    async def resume(self, entry: Mapping[str, Any]) -> StartOutcome:
        """After the service restarted: where a start it had under way stands."""


# -- views --------------------------------------------------------------------------------------


def waiting_status(entry: Mapping[str, Any]) -> str:
    """waiting | starting | started | cancelled | expired | failed."""
    status = entry["status"]
    if status == QUEUED:
        return "waiting"
    if status == RUNNING:
        return "starting"
    if status == COMPLETED:
        return "started"
    if status == CANCELLED:
        return "expired" if entry.get("reason") == EXPIRED else "cancelled"
    if status in (FAILED, LOST):
        return "failed"
    return status


def waiting_view(
    entry: Mapping[str, Any],
    where: Mapping[str, Any],
    queued: int,
    now: float,
    links: Mapping[str, str],
) -> dict[str, Any]:
    """One waiting request as `GET api/v1/waiting/{id}` answers it. `queued` is how many
    entries wait in all; `links` the request's `page` and the hub's `server` URL."""
    request = entry.get("request") or {}
    status = waiting_status(entry)
    eta = where.get("eta") if status == "waiting" else None
    return {
        "id": entry["id"],
        "user": entry["user"],
        "server_name": entry.get("name") or "",
        "status": status,
        "label": request.get("label") or "",
        "user_options": dict(request.get("user_options") or {}),
        "gpus": request.get("gpus", 0),
        "position": where.get("position") if status == "waiting" else None,
        "queued": queued,
        "expected_node": where.get("expected_node") if status == "waiting" else None,
        "eta": (
            {
                "start_at": iso(max(eta, now)),
                "starts_in_seconds": round(max(0.0, eta - now), 1),
                "estimate": True,
                "basis": ESTIMATE_BASIS,
            }
            if eta is not None
            else None
        ),
        "eta_text": eta_text(eta, now) if status == "waiting" else None,
        "submitted_at": iso(entry.get("submitted_at")),
        "expires_at": iso(entry.get("deadline_at")) if status == "waiting" else None,
        "finished_at": iso(entry.get("finished_at")),
        "message": entry.get("message"),
        "page": links.get("page"),
        "server_url": links.get("server"),
    }


# -- pushed changes ----------------------------------------------------------------------------

# What a change of a waiting request's view is pushed as (`GET api/v1/waiting/{id}/events`).
POSITION, STARTING, STARTED_EVENT, ENDED = "position", "starting", "started", "ended"
_STANDING = ("position", "queued", "expected_node", "eta_text", "message", "expires_at")


def waiting_event(
    previous: Mapping[str, Any] | None, view: Mapping[str, Any], links: Mapping[str, str]
) -> tuple[str, dict[str, Any], bool] | None:
    """The event that says how `view` differs from `previous` (None: the first), as
    (name, data, final); None when nothing people see changed.

    - `position` while it waits: its place, how many wait, the estimate, any note;
    - `starting` when the hub is asked to start it (it may wait again after);
    - `started`, final: the server runs; `url` is where to go;
    - `ended`, final: it left the queue (`cancelled`), `expired` or `failed`, with the
      message in words."""
    status = view["status"]
    before = previous["status"] if previous is not None else None
    if status == "waiting":
        if before == "waiting" and all(previous.get(k) == view.get(k) for k in _STANDING):
            return None
        data = {"status": status, **{k: view.get(k) for k in _STANDING}}
        return POSITION, data, False
    if status == "starting":
        if before == "starting":
            return None
        return STARTING, {"status": status, "message": view.get("message")}, False
    if status == "started":
        data = {"status": status, "url": links.get("server"), "message": view.get("message")}
        return STARTED_EVENT, data, True
    return ENDED, {"status": status, "message": view.get("message")}, True


# -- where a request joining now would stand ---------------------------------------------------


def _node_gpu(node: Mapping[str, Any]) -> tuple[str, str | None, str] | None:
    """A node's GPU kind: (resource, product, model), the first it has."""
    for resource in (node.get("gpu") or {}).get("resources") or ():
        if resource.get("allocatable"):
            return resource["name"], resource.get("product"), resource.get("model") or ""
    return None


def join_estimates(
    plan: Plan, waiting: Sequence[QueueEntry], nodes: Sequence[Mapping[str, Any]], now: float
) -> dict[str, Any]:
    """For the spawn form: per GPU model and per GPU node, how many queued entries (jobs and
    servers) could run there, and when a request for one GPU joining now could expect one
    (after all of those; `eta_text` for people, "unknown" without basis)."""
    kinds = {n["name"]: _node_gpu(n) for n in nodes}
    gpu_nodes = {name: kind for name, kind in kinds.items() if kind is not None}
    by_name = {n["name"]: n for n in nodes}
    taking: dict[tuple, frozenset[str]] = {}
    per_node = dict.fromkeys(gpu_nodes, 0)
    per_model: dict[tuple[str, str | None], int] = {}
    for entry in waiting:
        if not entry.gpus:
            continue
        key = (entry.rules, entry.gpu_resource)
        able = taking.get(key)
        if able is None:
            able = taking[key] = frozenset(
                name
                for name, kind in gpu_nodes.items()
                if kind[0] == entry.gpu_resource
                and rules_reason(entry.rules, by_name[name]) is None
            )
        for name in able:
            per_node[name] += 1
        for model in {gpu_nodes[name][:2] for name in able}:
            per_model[model] = per_model.get(model, 0) + 1

    def estimate(eta: float | None) -> dict[str, Any]:
        return {
            "eta": iso(max(eta, now)) if eta is not None else None,
            "starts_in_seconds": round(max(0.0, eta - now), 1) if eta is not None else None,
            "eta_text": eta_text(eta, now),
        }

    models: dict[tuple[str, str | None], dict[str, Any]] = {}
    for name, (resource, product, model) in gpu_nodes.items():
        held = models.setdefault(
            (resource, product),
            {"resource": resource, "product": product, "model": model, "_etas": []},
        )
        held["_etas"].append(plan.gpu_free_at.get(name))
    model_list = []
    for key, held in models.items():
        known = [eta for eta in held.pop("_etas") if eta is not None]
        model_list.append(
            {**held, "waiting": per_model.get(key, 0), **estimate(min(known) if known else None)}
        )
    return {
        "estimate": True,
        "basis": ESTIMATE_BASIS,
        "models": model_list,
        "nodes": {
            name: {"waiting": per_node[name], **estimate(plan.gpu_free_at.get(name))}
            for name in gpu_nodes
        },
    }
