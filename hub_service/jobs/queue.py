"""The GPU queue's decisions, pure: in which order waiting work runs, what starts now and
where, each entry's position, where it is expected to run and an estimate of when.

One queue for the hub: GPU jobs and waiting notebook requests compete in one order.

**Order.** Higher priority first; within a priority, fair share between people: each
person's first waiting entry (counting what they already run) comes before anyone's second,
and so on; then submission time. A person with a hundred queued jobs does not starve one
with one.

**Starting.** Entries are taken in that order. One starts when the feasibility filter
(`thinkube_core.scheduling`, the same truth the spawn form uses) finds a node whose rules
take it and that has room now; among those, the node with the least work ahead of it: the
remaining expected time of what runs there plus the expected time of what is queued for it.
An entry that cannot start holds its place for its kind: later entries that need the same
kind of GPU (or, without GPUs, the same place) do not start ahead of it, so a job asking for
four GPUs is not starved by a stream of one-GPU jobs. Entries of other kinds may start.

**Estimates.** Made after what starts now is decided (and handed over to be started), with
that counted. Where each waiting entry is expected to run (the least-loaded node that
takes it and could hold it at all) and when it may start: on that node, a timeline of its
GPUs, each busy until its running job's expected end, handed in queue order. Labelled an
estimate: expected times are what people said, not what will happen. Unknown (None) when
there is no basis: no node could ever hold it, or it needs no GPU and the node is full with
nothing expected to end.
"""

from __future__ import annotations

import bisect
import functools
import heapq
from collections import Counter, defaultdict
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from thinkube_core.scheduling import PODS, PodRules, rules_reason

__all__ = [
    "Plan",
    "QueueEntry",
    "Running",
    "kind_of",
    "order_key",
    "plan",
    "planning",
    "queue_order",
    "with_assumed",
]

# The planner gives way (to the service's other requests) after this many waiting entries.
STEP = 200


@dataclass(frozen=True)
class QueueEntry:
    """A waiting job or notebook request, as the planner sees it."""

    id: str
    user: str
    submitted_at: float
    expected_s: float  # how long it is expected to run once started
    demand: Mapping[str, int]  # scheduler units (cpu millicores, memory bytes, GPUs)
    rules: PodRules  # where it may run
    priority: int = 0
    kind: str = "job"  # "job" | "server"

    # Cached: read several times per entry in every plan, over thousands of entries.
    @functools.cached_property
    def gpu_resource(self) -> str | None:
        return next((n for n, u in self.demand.items() if n.startswith("nvidia.com/") and u), None)

    @functools.cached_property
    def gpus(self) -> int:
        resource = self.gpu_resource
        return self.demand[resource] if resource else 0


@dataclass(frozen=True)
class Running:
    """Work that holds resources now: a started job or server."""

    id: str
    user: str
    node: str
    started_at: float
    expected_s: float | None  # None: no end expected (a notebook server)
    gpus: int = 0


@dataclass
class Plan:
    start: list[tuple[QueueEntry, str]] = field(default_factory=list)  # start now, there
    order: list[str] = field(default_factory=list)  # the waiting entries, in queue order
    positions: dict[str, int] = field(default_factory=dict)  # 1-based, in `order`
    expected_node: dict[str, str | None] = field(default_factory=dict)
    eta: dict[str, float | None] = field(default_factory=dict)  # epoch seconds, or unknown
    # What places an entry submitted after this plan (`later_key`): each entry of `order`'s
    # `order_key`, what each person runs and the priorities of what each has waiting
    # (ascending). Empty where the order is not ours (a backend's admission orders it).
    order_keys: list[tuple] = field(default_factory=list)
    running_per_user: Mapping[str, int] = field(default_factory=dict)
    waiting_priorities: dict[str, list[int]] = field(default_factory=dict)
    # Per kind of entry (`kind_of`): the order key of the first that found no room.
    held: dict[tuple, tuple] = field(default_factory=dict)
    # Per GPU node: when one of its GPUs is expected free after everything waiting was
    # placed (epoch seconds; None: no basis, e.g. held by servers without an expected end).
    # Where a request joining the queue now would stand.
    gpu_free_at: dict[str, float | None] = field(default_factory=dict)

    def ahead_of(self, entry_id: str) -> int:
        return self.positions.get(entry_id, 0) - 1

    def later_key(self, user: str, priority: int, submitted_at: float, entry_id: str) -> tuple:
        """The `order_key` of an entry submitted after this plan was made (so after every
        entry in it): its turn counts what its person runs and has waiting at its priority
        or above; entries also submitted after the plan are the caller's to count."""
        priorities = self.waiting_priorities.get(user, [])
        ahead = len(priorities) - bisect.bisect_left(priorities, priority)
        return order_key(
            priority, self.running_per_user.get(user, 0) + ahead, submitted_at, entry_id
        )

    def place_of(self, key: tuple) -> int:
        """How many entries of this plan's order come before one of order key `key`."""
        return bisect.bisect_left(self.order_keys, key)

    def could_start(self, entry: QueueEntry, key: tuple) -> bool:
        """Whether an entry submitted after this plan, of order key `key`, could start
        before anything else changes: not when one of its kind ahead of it already waits
        for room (it holds its place, see the module), so it needs no new plan to start."""
        held = self.held.get(kind_of(entry))
        return held is None or key < held


def order_key(priority: int, turn: int, submitted_at: float, entry_id: str) -> tuple:
    """Where an entry stands in the queue order: sorted ascending, higher priority first,
    then the person's turn (what they run, plus their entries ahead of it), then time."""
    return (-priority, turn, submitted_at, entry_id)


def _ranked(
    waiting: Iterable[QueueEntry], running_per_user: Mapping[str, int]
) -> list[tuple[tuple, QueueEntry]]:
    by_user: dict[str, list[QueueEntry]] = defaultdict(list)
    for entry in waiting:
        by_user[entry.user].append(entry)
    ranked = []
    for user, entries in by_user.items():
        entries.sort(key=lambda e: (-e.priority, e.submitted_at, e.id))
        held = running_per_user.get(user, 0)
        for turn, entry in enumerate(entries):
            key = order_key(entry.priority, held + turn, entry.submitted_at, entry.id)
            ranked.append((key, entry))
    ranked.sort(key=lambda pair: pair[0])
    return ranked


def queue_order(
    waiting: Iterable[QueueEntry], running_per_user: Mapping[str, int] | None = None
) -> list[QueueEntry]:
    """Priority, then fair share between people, then submission time (see the module)."""
    return [entry for _, entry in _ranked(waiting, running_per_user or {})]


def with_assumed(
    nodes: Sequence[Mapping], assumed: Iterable[tuple[str, Mapping[str, int]]]
) -> list[Mapping]:
    """The node documents with what started work holds taken off their `free`, for work
    the documents do not count yet (its pod not yet seen bound, its process not yet
    published): without it, the next plan would see the room it took still free."""
    taken: dict[str, Counter] = defaultdict(Counter)
    for node, demand in assumed:
        taken[node].update(demand)
        taken[node][PODS] += 1
    if not taken:
        return list(nodes)
    adjusted = []
    for node in nodes:
        held = taken.get(node["name"])
        if held:
            free = dict(node.get("free") or {})
            for name, units in held.items():
                free[name] = free.get(name, 0) - units
            node = {**node, "free": free}
        adjusted.append(node)
    return adjusted


def _fits(demand: Mapping[str, int], free: Mapping[str, int]) -> bool:
    if free.get(PODS, 0) < 1:
        return False
    return all(units <= 0 or free.get(name, 0) >= units for name, units in demand.items())


def kind_of(entry: QueueEntry) -> tuple:
    """What a waiting entry holds its place for: its GPU resource, else its rules."""
    return (entry.gpu_resource,) if entry.gpu_resource else ("cpu", entry.rules)


def plan(
    waiting: Sequence[QueueEntry],
    running: Sequence[Running],
    nodes: Sequence[Mapping],
    now: float,
) -> Plan:
    """What to start now, and where everything waiting stands (see the module)."""
    steps = planning(waiting, running, nodes, now)
    while True:
        try:
            next(steps)
        except StopIteration as made:
            return made.value


Starts = list[tuple[QueueEntry, str]]


def planning(
    waiting: Sequence[QueueEntry],
    running: Sequence[Running],
    nodes: Sequence[Mapping],
    now: float,
) -> Generator[Starts | None, None, Plan]:
    """`plan`, in steps, so that a service planning 10,000 entries answers its other
    requests in between: it yields None after every STEP waiting entries, and once, before
    estimating where and when the others may start, what starts now (`Plan.start`: it may
    be started then); it returns the plan."""
    running_per_user = Counter(r.user for r in running)
    ranked = _ranked(waiting, running_per_user)
    order = [entry for _, entry in ranked]
    result = Plan(order=[e.id for e in order], running_per_user=running_per_user)
    result.positions = {entry_id: index + 1 for index, entry_id in enumerate(result.order)}

    by_name = {node["name"]: node for node in nodes}
    free = {name: dict(node.get("free") or {}) for name, node in by_name.items()}
    # Work ahead of each node (seconds): what runs there, then what is queued for it.
    load: dict[str, float] = defaultdict(float)
    gpu_ends: dict[str, list[float]] = defaultdict(list)  # per node: when each busy GPU frees
    for job in running:
        remaining = max(0.0, job.started_at + job.expected_s - now) if job.expected_s else None
        # Work with no expected end (a notebook server) keeps its node busy for good.
        load[job.node] += remaining if remaining is not None else float("inf")
        end = now + remaining if remaining is not None else float("inf")
        gpu_ends[job.node].extend([end] * job.gpus)
    slots: dict[str, list[float]] = {}  # per node: a heap of when each GPU is next free

    def timeline(name: str, resource: str) -> list[float]:
        if name not in slots:
            allocatable = (by_name[name].get("free") or {}).get(resource, 0) + len(gpu_ends[name])
            busy = sorted(gpu_ends[name])
            heap = busy + [now] * max(0, allocatable - len(busy))
            heapq.heapify(heap)
            slots[name] = heap
        return slots[name]

    taking: dict[PodRules, list[str]] = {}  # the nodes whose rules take each kind of pod

    def nodes_taking(rules: PodRules) -> list[str]:
        if rules not in taking:
            taking[rules] = [n for n, node in by_name.items() if rules_reason(rules, node) is None]
        return taking[rules]

    # Per set of nodes a waiting entry could ever run on: a heap of (work ahead, node),
    # brought up to date as it is read (work ahead only grows), so that placing 10,000
    # waiting entries over 1,000 nodes does not scan every node for each.
    able_nodes: dict[tuple, list[str]] = {}
    least_loaded: dict[tuple, list[tuple[float, str]]] = {}

    def least_loaded_of(key: tuple, able: list[str]) -> str:
        heap = least_loaded.get(key)
        if heap is None:
            heap = least_loaded[key] = [(load[n], n) for n in able]
            heapq.heapify(heap)
        while heap[0][0] != load[heap[0][1]]:
            heapq.heapreplace(heap, (load[heap[0][1]], heap[0][1]))
        return heap[0][1]

    # What starts now: in order, each entry whose kind no earlier entry holds, where it fits.
    held_kinds = result.held  # kind -> the order key of its first entry that must wait
    for index, (key, entry) in enumerate(ranked):
        if index % STEP == STEP - 1:
            yield None
        kind = kind_of(entry)
        if kind in held_kinds:
            continue
        room = [n for n in nodes_taking(entry.rules) if _fits(entry.demand, free[n])]
        if not room:
            held_kinds[kind] = key
            continue
        node = min(room, key=lambda n: (load[n], n))
        result.start.append((entry, node))
        for name, units in entry.demand.items():
            free[node][name] = free[node].get(name, 0) - units
        free[node][PODS] = free[node].get(PODS, 0) - 1
        load[node] += entry.expected_s
        if entry.gpus:
            heap = timeline(node, entry.gpu_resource)
            for _ in range(min(entry.gpus, len(heap))):
                heapq.heappushpop(heap, now + entry.expected_s)
        result.expected_node[entry.id] = node
        result.eta[entry.id] = now
    yield result.start

    # Where and when the others are expected to start, in order, after what starts now.
    starting = {entry.id for entry, _ in result.start}
    for index, (_, entry) in enumerate(ranked):
        if index % STEP == STEP - 1:
            yield None
        if entry.id in starting:
            continue
        candidates = nodes_taking(entry.rules)
        able_key = (entry.rules, entry.gpu_resource, entry.gpus)
        able = able_nodes.get(able_key)
        if able is None:
            able = able_nodes[able_key] = [
                n for n in candidates if _could_ever_hold(entry, by_name[n], gpu_ends[n])
            ]
        if not able:
            result.expected_node[entry.id] = None
            result.eta[entry.id] = None
            continue
        node = least_loaded_of(able_key, able)
        result.expected_node[entry.id] = node
        work_ahead = load[node]
        load[node] += entry.expected_s
        if entry.gpus:
            heap = timeline(node, entry.gpu_resource)
            freed = [heapq.heappop(heap) for _ in range(entry.gpus)]
            start = max(freed)
            for _ in freed:
                heapq.heappush(heap, start + entry.expected_s)
            result.eta[entry.id] = start if start != float("inf") else None
        else:
            # Without GPUs to count, the work ahead of the node, done one after another.
            known = 0 < work_ahead < float("inf")
            result.eta[entry.id] = now + work_ahead if known else None
    for name, node in by_name.items():
        resource = _gpu_resource_of_node(node, gpu_ends[name])
        if resource is None:
            continue
        heap = timeline(name, resource)
        first = heap[0] if heap else float("inf")
        result.gpu_free_at[name] = first if first != float("inf") else None
    for entry, _ in result.start:
        result.positions.pop(entry.id, None)
        running_per_user[entry.user] += 1  # what it runs once these start
    still = [(key, entry) for key, entry in ranked if entry.id in result.positions]
    result.order = [entry.id for _, entry in still]
    result.order_keys = [key for key, _ in still]
    result.positions = {entry_id: index + 1 for index, entry_id in enumerate(result.order)}
    priorities: dict[str, list[int]] = defaultdict(list)
    for _, entry in still:
        priorities[entry.user].append(entry.priority)
    result.waiting_priorities = {user: sorted(p) for user, p in priorities.items()}
    return result


def _gpu_resource_of_node(node: Mapping, busy_gpus: list[float]) -> str | None:
    """The GPU resource a node has (free or held), if any."""
    allocatable = node.get("allocatable") or {}
    free = node.get("free") or {}
    for name in (*allocatable, *free):
        if name.startswith("nvidia.com/") and (allocatable.get(name) or free.get(name)):
            return name
    return "nvidia.com/gpu" if busy_gpus else None


def _could_ever_hold(entry: QueueEntry, node: Mapping, busy_gpus: list[float]) -> bool:
    """Whether the node could hold the entry once everything running there ended."""
    if not entry.gpus:
        return True
    free = (node.get("free") or {}).get(entry.gpu_resource, 0)
    return free + len(busy_gpus) >= entry.gpus
