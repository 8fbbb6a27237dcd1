"""The spawn menu: what a person may choose, built from live availability, and the check of
a choice against fresh data. Pure functions, no I/O: the spawner feeds them the service's
documents (nodes, summary, image catalog).

A choice is `user_options` as kubespawner's form posts it and the REST API takes it:
`{"profile": "thinkube", "image": "scipy", "where": "gpu:nvidia-a100-sxm4-80gb",
"cpu": "4", "memory": "16", "gpus": "1"}`. Every value is looked up in the menu; nothing a
user sends reaches a pod spec without being one of the menu's own values.

Where a server may go is decided by one filter (`thinkube_core.scheduling`), asked about the
pod the spawner will submit for that choice: `MenuSettings.pod` shapes it exactly as the
spawn does (the admin's tolerations, node selector, required affinity, extra pod config and
containers, plus the choice), so the form offers exactly the places the scheduler will take.

Cloud GPUs (RunPod offers, when the hub has cloud configured) are placements too, keyed
`cloud:<offer key>`, with a `pricing` of `on-demand` or `spot`. The menu holds every offer;
what one person may choose depends on their price cap, given to `check_choice` (and to the
form) per person, since a menu is shared by all.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from thinkube_core.quantity import QuantityError, parse_quantity
from thinkube_core.runpod.offers import Offer, price_problem
from thinkube_core.scheduling import (
    PODS,
    PodRules,
    demand_reason,
    describe_amount,
    pod_demand,
    rules_reason,
)
from thinkube_core.waiting import QUEUE_ENTRY_OPTION, WAIT_OPTION

from .choice import (
    ANY_CPU,
    CLOUD_GROUP,
    CLOUD_PREFIX,
    GIB,
    GPU_TAINT_KEY,
    ON_DEMAND,
    PROFILE_SLUG,
    SPOT,
    Choice,
    ChoiceError,
    Placement,
    fmt,
)
from .shaping import PodTemplate

__all__ = [
    "ANY_CPU",
    "CLOUD_PREFIX",
    "GIB",
    "GPU_TAINT_KEY",
    "ON_DEMAND",
    "PROFILE_SLUG",
    "SPOT",
    "Choice",
    "ChoiceError",
    "Menu",
    "MenuSettings",
    "Placement",
    "build_menu",
    "check_choice",
    "demand_for",
    "fits",
]


@dataclass(frozen=True)
class MenuSettings:
    cpu_choices: tuple[float, ...] = (1, 2, 4, 8, 16, 32)
    memory_choices_gib: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)
    gpu_choices: tuple[int, ...] = (0, 1, 2, 4, 8)
    cpu_guarantee_ratio: float = 0.5
    mem_guarantee_ratio: float = 1.0
    max_nodes_listed: int = 50
    # One machine, no cluster (ThinkubeLocalSpawner): say "this machine", not "any node".
    single_machine: bool = False
    # How a choice becomes the pod: the hub's configuration of the pod, applied as at spawn.
    pod: PodTemplate = field(default_factory=PodTemplate)


@dataclass
class Menu:
    images: list[dict]
    placements: list[Placement]
    settings: MenuSettings
    nodes_hidden: int = 0  # nodes left out of the list (cap)
    unlisted_nodes: frozenset[str] = frozenset()  # their names: they take the pod, not offered
    generated_at: str = ""
    stale: bool = False
    age_seconds: float = 0.0
    cloud_note: str | None = None  # why no cloud offer is listed although cloud is on
    nodes: dict[str, dict] = field(default_factory=dict)  # every node's document, by name

    def placement(self, key: str) -> Placement | None:
        return next((p for p in self.placements if p.key == key), None)

    def image(self, name: str) -> dict | None:
        return next((i for i in self.images if i["name"] == name), None)

    @property
    def here(self) -> str:
        """How messages name the only node in single-machine mode."""
        return "this machine"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _gib(amount: int) -> str:
    value = amount / GIB
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _cpu(amount: float) -> str:
    return f"{amount:.0f}" if amount == int(amount) or amount >= 10 else f"{amount:.1f}"


def _short_model(model: str) -> str:
    return model.removeprefix("NVIDIA ").removeprefix("GeForce ")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


# -- the pod a choice makes ------------------------------------------------------------------


def _request(settings: MenuSettings, cpu: float, memory_gib: float) -> tuple[float, int]:
    return cpu * settings.cpu_guarantee_ratio, int(memory_gib * GIB * settings.mem_guarantee_ratio)


@dataclass(frozen=True)
class Pod:
    """What the filter needs of the pod a choice would submit."""

    rules: PodRules
    demand: dict[str, int]  # the whole pod's requests, scheduler units
    notebook: dict[str, int]  # the server container's own requests


@functools.lru_cache(maxsize=8192)
def _pod(
    settings: MenuSettings,
    kind: str,
    node: str | None,
    gpu_resource: str | None,
    gpu_product_label: str | None,
    gpu_product: str | None,
    cpu: float,
    memory_gib: float,
    gpus: int,
) -> Pod:
    placement = Placement(
        "",
        kind,
        "",
        node=node,
        gpu_resource=gpu_resource,
        gpu_product_label=gpu_product_label,
        gpu_product=gpu_product,
    )
    cpu_request, memory_request = _request(settings, cpu, memory_gib)
    choice = Choice({}, placement, cpu, int(memory_gib), gpus, node, cpu_request, memory_request)
    spec = settings.pod.spec(choice)
    return Pod(
        PodRules.of_pod_spec(spec),
        pod_demand(spec),
        pod_demand({"containers": spec["containers"][:1]}),
    )


def pod_for(
    settings: MenuSettings, placement: Placement, cpu: float, memory_gib: float, gpus: int
) -> Pod:
    """The pod this choice would submit, as the filter sees it. Raises MalformedObject when
    the hub's own pod configuration cannot be read. Cached: it depends on the configuration
    and the choice only."""
    return _pod(
        settings,
        placement.kind,
        placement.node,
        placement.gpu_resource if gpus or placement.kind == "node" else None,
        placement.gpu_product_label,
        placement.gpu_product,
        float(cpu),
        float(memory_gib),
        int(gpus),
    )


def demand_for(
    settings: MenuSettings, placement: Placement, cpu: float, memory_gib: float, gpus: int
) -> dict[str, int]:
    return pod_for(settings, placement, cpu, memory_gib, gpus).demand


_PROBE = 10**6  # cores, GiB and GPUs more than any server asks for


def demand_shape(
    settings: MenuSettings, placement: Placement
) -> tuple[dict[str, int], dict[str, int]]:
    """How a choice's own requests become the pod's demand, per resource:
    `demand = max(server + add, floor)` (what the admin's other containers add, and the
    least the pod asks for whatever the choice, e.g. an init container's peak). Lets the
    page's script check a choice without knowing the pod's configuration."""
    floor = demand_for(settings, placement, 0, 0, 0)
    gpus = _PROBE if placement.gpu_resource else 0
    probe = pod_for(settings, placement, _PROBE, _PROBE, gpus)
    names = {*probe.demand, *probe.notebook}
    add = {n: probe.demand.get(n, 0) - probe.notebook.get(n, 0) for n in sorted(names)}
    return add, floor


def _smallest(settings: MenuSettings, with_gpu: bool) -> tuple[float, float, int]:
    """The smallest server the menu offers: cpu, memory (GiB), GPUs."""
    gpus = min((g for g in settings.gpu_choices if g > 0), default=1) if with_gpu else 0
    return (
        min(settings.cpu_choices, default=0),
        min(settings.memory_choices_gib, default=0),
        gpus,
    )


# -- room --------------------------------------------------------------------------------------


def _frontier(nodes: Iterable[dict], dims: tuple[str, ...]) -> list[dict[str, Any]]:
    """The free room of these nodes over `dims`, keeping only rows no other row beats (or
    equals) in every dimension: whatever fits one of the nodes fits one of these. Nodes at
    their pod limit take nothing and are left out; every other node has room for the one pod
    a server is, so the pod count is no dimension here."""
    # Rows hold the negated room, so that a plain sort puts the roomiest first (names
    # break ties) without a key function: this runs over every node of the cluster.
    rows = []
    for node in nodes:
        free = node.get("free") or {}
        if free.get(PODS, 0) >= 1:
            rows.append((tuple([-free.get(d, 0) for d in dims]), node["name"]))
    rows.sort()
    kept: list[tuple[tuple[int, ...], str]] = []
    if len(dims) == 2:
        # Sorted by the first dimension, a row is beaten only by an earlier row with at
        # least as much of the second: keep the rows that raise the best second so far.
        best = None
        for negated, name in rows:
            if best is None or negated[1] < best:
                kept.append((negated, name))
                best = negated[1]
    else:
        for negated, name in rows:
            if not any(_covers(other, negated) for other, _ in kept):
                kept.append((negated, name))
    return [
        {"node": name, "free": {d: -v for d, v in zip(dims, negated, strict=True)}}
        for negated, name in kept
    ]


def _covers(big: tuple[int, ...], small: tuple[int, ...]) -> bool:
    """Whether negated room `big` is at least as much as `small` in every dimension."""
    for have, need in zip(big, small, strict=True):
        if have > need:
            return False
    return True


def fits(placement: Placement, demand: Mapping[str, int]) -> list[dict[str, Any]]:
    """The frontier rows of this placement with room for `demand` now."""
    return [
        row
        for row in placement.frontier
        if all(row["free"].get(name, 0) >= units for name, units in demand.items() if units > 0)
    ]


def _dims(demands: Iterable[Mapping[str, int]]) -> tuple[str, ...]:
    names = {name for demand in demands for name, units in demand.items() if units > 0}
    return tuple(sorted(names - {PODS}))


def _refusal_text(refusals: Mapping[str, int]) -> str:
    """The commonest reasons nodes refused a pod, counted: "3 nodes: tainted …"."""
    top = sorted(refusals.items(), key=lambda item: (-item[1], item[0]))[:2]
    return "; ".join(f"{_plural(count, 'node')}: {reason}" for reason, count in top)


# -- building the menu ------------------------------------------------------------------------


def _node_label(node: Mapping[str, Any]) -> str:
    available, capacity = node["available"], node["capacity"]
    text = (
        f"{node['name']}: {_cpu(available['cpu'])}/{_cpu(capacity['cpu'])} CPU, "
        f"{_gib(available['memory'])}/{_gib(capacity['memory'])} GiB"
    )
    gpu = node.get("gpu")
    if gpu and gpu.get("schedulable_count"):
        kinds = [r for r in gpu.get("resources") or [] if r.get("allocatable")]
        if len(kinds) > 1:  # MIG mixed (or a rename beside whole GPUs): count each kind apart
            parts = [
                f"{r['free']}/{r['allocatable']} × {r['model'].removeprefix(gpu['model']).strip() or r['model']}"
                for r in kinds
            ]
            text += f", {', '.join(parts)} free"
        else:
            text += f", {gpu['free_count']}/{gpu['schedulable_count']} × {gpu['model']} free"
        if (gpu.get("replicas") or 1) > 1:
            physical = gpu.get("physical_count") or 0
            text += f" ({_plural(physical, 'GPU')} shared {gpu['replicas']} ways)"
    return text


def _room(node: Mapping[str, Any]) -> tuple:
    """Most free GPUs, then CPU, then memory first; the name breaks ties."""
    available = node["available"]
    return (-available["gpu"], -available["cpu"], -available["memory"], node["name"])


def _gpu_resource_of(node: Mapping[str, Any]) -> dict | None:
    gpu = node.get("gpu") or {}
    return next((r for r in gpu.get("resources") or [] if r.get("allocatable")), None)


def _product_label(resource: str) -> str:
    if resource.startswith("nvidia.com/mig-"):
        return f"{resource}.product"
    return "nvidia.com/gpu.product"


def _model_key(model: Mapping[str, Any]) -> str:
    return (
        "gpu:"
        + slug(model.get("product") or model["model"])
        + (
            ""
            if model["resource"] == "nvidia.com/gpu"
            else "@" + slug(model["resource"].split("/")[-1])
        )
    )


# The filter's verdict on a node's rules-relevant facts (labels, taints, readiness) depends
# on nothing else: kept per pod rules and node, with the node's `scheduling_key`, so that a
# menu rebuilt because pods changed asks the filter only about nodes whose facts changed.
_VERDICTS: dict[PodRules, dict[str, tuple[str, str | None]]] = {}
_VERDICTS_KEPT = 4096  # rules; node pins make one each


def _verdicts(rules: PodRules) -> dict[str, tuple[str, str | None]]:
    held = _VERDICTS.get(rules)
    if held is None:
        if len(_VERDICTS) >= _VERDICTS_KEPT:
            _VERDICTS.clear()
        held = _VERDICTS[rules] = {}
    return held


class _Room:
    """Splits nodes by a placement's rules and keeps the frontier of those that take it."""

    def __init__(self, settings: MenuSettings):
        self.settings = settings

    def fill(self, placement: Placement, nodes: Iterable[dict]) -> None:
        settings = self.settings
        with_gpu = placement.kind == "gpu"
        cpu, memory, gpus = _smallest(settings, with_gpu)
        pod = pod_for(settings, placement, cpu, memory, gpus)
        rules, smallest = pod.rules, pod.demand
        largest = demand_for(
            settings,
            placement,
            max(settings.cpu_choices, default=0),
            max(settings.memory_choices_gib, default=0),
            max(settings.gpu_choices, default=0) if placement.gpu_resource else 0,
        )
        taking, refusals = [], Counter()
        verdicts = _verdicts(rules)
        for node in nodes:
            name, key = node["name"], node.get("scheduling_key")
            held = verdicts.get(name)
            if key is not None and held is not None and held[0] == key:
                reason = held[1]
            else:
                reason = rules_reason(rules, node)
                if key is not None:
                    verdicts[name] = (key, reason)
            if reason is None:
                taking.append(node)
            else:
                refusals[reason] += 1
        placement.refusals = dict(refusals)
        placement.taking = len(taking)
        if placement.gpu_resource:
            resource = placement.gpu_resource
            free = [(n.get("free") or {}).get(resource, 0) for n in taking]
            placement.gpus_free = sum(max(f, 0) for f in free)
            placement.gpu_nodes_free = sum(1 for f in free if f > 0)
        placement.frontier = _frontier(taking, _dims((smallest, largest)))
        if not taking:
            placement.disabled = True
            placement.reason = self._nowhere(placement, refusals)
        elif not fits(placement, smallest):
            placement.disabled = True
            placement.reason = self._full(placement, taking, smallest)

    def _nowhere(self, placement: Placement, refusals: Mapping[str, int]) -> str:
        if placement.kind == "node":
            return next(iter(refusals), "not schedulable")
        if not refusals:
            return "no node has one" if placement.kind == "gpu" else "no nodes"
        if self.settings.single_machine:
            return next(iter(refusals))
        return f"no node takes this server ({_refusal_text(refusals)})"

    def _full(self, placement: Placement, taking: list[dict], smallest: Mapping[str, int]) -> str:
        if placement.kind == "node":
            return demand_reason(smallest, taking[0]) or "full"
        if placement.gpu_resource and not placement.gpus_free:
            return "none free right now"
        roomiest = min(taking, key=_room)
        where = "" if self.settings.single_machine else f"{roomiest['name']}: "
        return f"full ({where}{demand_reason(smallest, roomiest)})"


def _cpu_placement(settings: MenuSettings) -> Placement:
    one = settings.single_machine
    return Placement(
        ANY_CPU,
        "cpu",
        "CPU only (no GPU)" if one else "Any node (CPU only)",
        group="This machine" if one else "Anywhere",
    )


def _gpu_placement(settings: MenuSettings, model: Mapping[str, Any]) -> Placement:
    return Placement(
        _model_key(model),
        "gpu",
        "",
        gpu_resource=model["resource"],
        gpu_product=model.get("product"),
        gpu_product_label=_product_label(model["resource"]),
        gpu_model=model["model"],
        gpu_memory_mib=model.get("memory_mib"),
        group="This machine's GPUs" if settings.single_machine else "GPU models",
    )


def _gpu_label(settings: MenuSettings, model: Mapping[str, Any], placement: Placement) -> str:
    """ "Any node with a free A100 (3 free on 2 nodes, 80 GiB)", counting the nodes that
    take the pod."""
    memory = f", {round(model['memory_mib'] / 1024)} GiB" if model.get("memory_mib") else ""
    memory += ", shared" if model.get("shared") else ""  # time-sliced or MPS slots
    free = placement.gpus_free
    if settings.single_machine:
        return f"A free {model['model']} ({free} free{memory})"
    return (
        f"Any node with a free {model['model']} ({free} free on "
        f"{_plural(placement.gpu_nodes_free, 'node')}{memory})"
    )


def build_menu(
    nodes: list[dict],
    summary: Mapping[str, Any],
    images: list[dict],
    settings: MenuSettings,
    freshness: Mapping[str, Any] | None = None,
    cloud: Mapping[str, Any] | None = None,
) -> Menu:
    """Everything the form offers, each choice decided by the feasibility filter for the pod
    it would submit, the ones that cannot run now disabled with the reason; `cloud` is the
    service's cloud section, if any. Raises MalformedObject when the hub's own pod
    configuration cannot be read."""
    freshness = freshness or {}
    room = _Room(settings)
    by_name = {n["name"]: n for n in nodes}
    ordered_images = sorted(
        images, key=lambda i: (not i.get("default"), i.get("display_name", i["name"]).lower())
    )

    anywhere = _cpu_placement(settings)
    room.fill(anywhere, nodes)
    placements = [anywhere]

    # One placement per GPU model (resource name and product), over the nodes that have it.
    members: dict[tuple[str, str | None], list[dict]] = {}
    for node in nodes:
        for resource in (node.get("gpu") or {}).get("resources") or ():
            members.setdefault((resource["name"], resource.get("product")), []).append(node)
    model_of_node: dict[str, str] = {}
    for model in summary.get("gpu_models") or []:
        having = members.get((model["resource"], model.get("product")), [])
        for n in having:
            model_of_node.setdefault(n["name"], model["model"])
        placement = _gpu_placement(settings, model)
        room.fill(placement, having)
        placement.label = _gpu_label(settings, model, placement)
        placements.append(placement)

    # Specific nodes: the roomiest schedulable ones, grouped by GPU model, capped.
    schedulable = sorted((n for n in nodes if n.get("schedulable")), key=_room)
    listed = schedulable[: settings.max_nodes_listed]
    unlisted = frozenset(n["name"] for n in schedulable[settings.max_nodes_listed :])
    listed.sort(key=lambda n: (model_of_node.get(n["name"], "~"), _room(n)))
    for node in listed:
        resource = _gpu_resource_of(node)
        placement = Placement(
            f"node:{node['name']}",
            "node",
            _node_label(node),
            node=node["name"],
            gpu_resource=resource["name"] if resource else None,
            gpu_product=resource.get("product") if resource else None,
            gpu_model=resource["model"] if resource else None,
            gpu_memory_mib=resource.get("memory_mib") if resource else None,
            group="This machine"
            if settings.single_machine
            else f"Nodes with {model_of_node[node['name']]}"
            if node["name"] in model_of_node
            else "CPU nodes",
        )
        room.fill(placement, [node])
        placements.append(placement)

    cloud_listed, cloud_note = cloud_placements(cloud)
    return Menu(
        images=ordered_images,
        placements=placements + cloud_listed,
        settings=settings,
        nodes_hidden=len(unlisted),
        unlisted_nodes=unlisted,
        generated_at=str(freshness.get("generated_at", "")),
        stale=bool(freshness.get("stale")),
        age_seconds=float(freshness.get("age_seconds") or 0.0),
        cloud_note=cloud_note,
        nodes=by_name,
    )


# -- cloud offers -------------------------------------------------------------------------------


def cloud_placements(cloud: Mapping[str, Any] | None) -> tuple[list[Placement], str | None]:
    """The service's cloud section (`{"configured", "offers", "error", ...}`) as placements,
    in the service's order (cheapest first), and a note when cloud is on but nothing can be
    offered. Malformed offers are left out."""
    if not cloud or not cloud.get("configured"):
        return [], None
    placements = []
    for raw in cloud.get("offers") or []:
        try:
            offer = Offer(**raw)
            if not offer.gpu_type_id or offer.cloud_type not in ("SECURE", "COMMUNITY"):
                raise ValueError
        except (TypeError, ValueError):
            continue
        unpriced = offer.price_per_hour is None and offer.spot_price_per_hour is None
        placements.append(
            Placement(
                CLOUD_PREFIX + offer.key,
                "cloud",
                f"RunPod {offer.cloud_type.lower()} cloud: {offer.label()}",
                gpu_model=offer.display_name,
                gpu_memory_mib=int(offer.vram_gb * 1024) if offer.vram_gb else None,
                disabled=unpriced,
                reason="no price on RunPod right now" if unpriced else None,
                group=CLOUD_GROUP,
                offer=offer,
            )
        )
    note = None
    if not placements:
        note = "No cloud GPU offers are known right now" + (
            f" ({cloud['error']})." if cloud.get("error") else "."
        )
    return placements, note


def cloud_price(placement: Placement, spot: bool) -> float | None:
    return placement.offer.price(spot) if placement.offer else None


def within_cap(placement: Placement, cap: float) -> bool:
    """Whether a cloud placement has a price (on demand or spot) within `cap` USD/h."""
    prices = [cloud_price(placement, spot) for spot in (False, True)]
    return cap > 0 and any(price is not None and price <= cap for price in prices)


# -- checking a choice --------------------------------------------------------------------


def _number(
    user_options: Mapping[str, Any], key: str, allowed: Iterable[float], what: str, default: float
) -> float:
    """One of the offered values; a missing value (REST API) takes the default."""
    raw = user_options.get(key)
    allowed = [float(a) for a in allowed]
    if raw is None or raw == "":
        return default
    problem = f"{what} must be one of {', '.join(fmt(a) for a in allowed)}; got {str(raw)[:40]!r}."
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ChoiceError(problem) from None
    if not value.is_finite() or float(value) not in allowed:
        raise ChoiceError(problem)
    return float(value)


def default_choice(values: Iterable[float], index: int) -> float:
    """The preselected value of a list of choices (the form's default too)."""
    values = list(values)
    return float(values[min(index, len(values) - 1)]) if values else 0.0


def image_limit(
    image: Mapping[str, Any], cpu: float | None = None, memory_gib: float | None = None
) -> str | None:
    """Why the catalog entry does not allow this many CPUs or this much memory, or None."""
    metadata = image.get("metadata") or {}
    name = image.get("display_name") or image.get("name")
    if cpu is not None and metadata.get("cpu_limit"):
        try:
            limit = float(metadata["cpu_limit"])
        except (TypeError, ValueError):
            limit = None
        if limit is not None and cpu > limit:
            return f"{name} allows at most {fmt(limit)} CPUs"
    if memory_gib is not None and metadata.get("mem_limit"):
        try:
            limit_bytes = parse_quantity(metadata["mem_limit"])
        except QuantityError:
            return None
        if memory_gib * GIB > limit_bytes:
            return f"{name} allows at most {metadata['mem_limit']} of memory"
    return None


def check_choice(user_options: Mapping[str, Any], menu: Menu, cloud_cap: float = 0.0) -> Choice:
    """Validate a choice against (fresh) availability; ChoiceError says what is wrong.
    `cloud_cap` is this person's cloud price cap in USD/h (0: no cloud)."""
    if not isinstance(user_options, Mapping):
        raise ChoiceError("The server options must be an object.")
    profile = user_options.get("profile", PROFILE_SLUG)
    if profile != PROFILE_SLUG:
        raise ChoiceError(
            f"Unknown profile {str(profile)[:40]!r}: this hub offers {PROFILE_SLUG!r}."
        )
    # `wait` and `queue_entry` are the GPU queue's (thinkube_core.waiting): the spawner
    # reads them before the choice is checked.
    known = {"profile", "image", "where", "cpu", "memory", "gpus", "pricing", WAIT_OPTION}
    known.add(QUEUE_ENTRY_OPTION)
    unknown = sorted(str(k)[:40] for k in user_options if k not in known)
    if unknown:
        raise ChoiceError(f"Unknown server option(s): {', '.join(unknown)}.")
    settings = menu.settings
    image_name = user_options.get("image") or next(
        (i["name"] for i in menu.images if i.get("default")), None
    )
    image = menu.image(str(image_name)) if image_name else None
    if image is None:
        raise ChoiceError(
            f"Unknown image {str(image_name)[:60]!r}." if image_name else "No image is available."
        )
    where = str(user_options.get("where") or ANY_CPU)
    placement = menu.placement(where)
    if placement is None:
        if where.startswith("node:") and where[5:] in menu.unlisted_nodes:
            raise ChoiceError(
                f"{where[5:]} is not offered right now: only the {menu.settings.max_nodes_listed} roomiest nodes are "
                "listed. Choose a GPU model or 'Any node (CPU only)' instead."
            )
        if where.startswith("node:"):
            raise ChoiceError(f"There is no schedulable node named {where[5:][:60]!r}.")
        raise ChoiceError(f"Unknown placement {where[:60]!r}.")
    cpu = _number(
        user_options, "cpu", settings.cpu_choices, "CPUs", default_choice(settings.cpu_choices, 1)
    )
    memory = int(
        _number(
            user_options,
            "memory",
            settings.memory_choices_gib,
            "Memory (GiB)",
            default_choice(settings.memory_choices_gib, 2),
        )
    )
    gpus = int(_number(user_options, "gpus", settings.gpu_choices, "GPUs", 0))

    if placement.kind == "cloud":
        return _check_cloud_choice(user_options, placement, image, cpu, memory, cloud_cap)
    if user_options.get("pricing") not in (None, "", ON_DEMAND):
        raise ChoiceError("Pricing (on demand or spot) is for cloud GPUs only.")

    metadata = image.get("metadata") or {}
    if metadata.get("gpu_required") and gpus == 0:
        raise ChoiceError(
            f"{image['display_name']} needs a GPU: choose a GPU placement and at least one GPU."
        )
    limit = image_limit(image, cpu, memory)
    if limit:
        raise ChoiceError(f"{limit}.")
    if placement.kind == "cpu" and gpus:
        raise ChoiceError(
            f"'{placement.label}' has no GPUs: choose a GPU model or a GPU node, or 0 GPUs."
        )
    if placement.kind == "gpu" and not gpus:
        raise ChoiceError(
            f"'Any node with a free {placement.gpu_model}' is for GPU servers: choose at least 1 GPU, "
            "or 'Any node (CPU only)'."
        )
    if gpus and not placement.gpu_resource:
        raise ChoiceError(f"{placement.node} has no GPUs: choose 0 GPUs or another place.")

    pod = pod_for(settings, placement, cpu, memory, gpus)
    rules, demand = pod.rules, pod.demand
    if placement.kind == "node":
        node = menu.nodes.get(placement.node or "")
        reason = rules_reason(rules, node) if node else "no longer in the cluster"
        if reason:
            raise ChoiceError(f"{_name(menu, placement.node)} does not take this server: {reason}.")
    elif not placement.taking:
        kind = f"{placement.gpu_model} servers" if placement.gpu_model else "CPU-only servers"
        raise ChoiceError(f"{kind} cannot start here: {placement.reason}.")
    cpu_request, memory_request = _request(settings, cpu, memory)
    choice = Choice(
        image, placement, cpu, memory, gpus, placement.node, cpu_request, memory_request
    )
    if not fits(placement, demand):
        raise ChoiceError(
            no_room_message(placement, menu, cpu, memory, gpus), capacity=True, choice=choice
        )
    return choice


def _name(menu: Menu, node: str | None) -> str:
    return menu.here.capitalize() if menu.settings.single_machine else str(node)


def _check_cloud_choice(
    user_options: Mapping[str, Any],
    placement: Placement,
    image: dict,
    cpu: float,
    memory: int,
    cloud_cap: float,
) -> Choice:
    """A RunPod offer: within this person's cap at the chosen pricing. The GPU count is the
    offer's; CPU and memory come with the machine (the values are kept for the record)."""
    offer = placement.offer
    assert offer is not None
    pricing = str(user_options.get("pricing") or ON_DEMAND)
    if pricing not in (ON_DEMAND, SPOT):
        raise ChoiceError(f"Pricing must be {ON_DEMAND!r} or {SPOT!r}; got {pricing[:20]!r}.")
    spot = pricing == SPOT
    problem = price_problem(offer, spot, cloud_cap)
    if problem:
        raise ChoiceError(problem)
    return Choice(image, placement, cpu, memory, offer.gpu_count, None, 0.0, 0, spot)


def _wanted(demand: Mapping[str, int], resource: str | None) -> str:
    text = f"{describe_amount('cpu', demand.get('cpu', 0))} and {_gib(demand.get('memory', 0))} GiB"
    gpus = demand.get(resource or "", 0)
    return text + (f" with {_plural(gpus, 'GPU')}" if gpus else "")


def no_room_message(
    placement: Placement, menu: Menu, cpu: float, memory_gib: float, gpus: int
) -> str:
    """Say plainly why this choice does not fit, and where it would."""
    settings = menu.settings
    demand = demand_for(settings, placement, cpu, memory_gib, gpus)
    resource = placement.gpu_resource
    want = _wanted(demand, resource)
    if placement.kind == "node":
        node = menu.nodes.get(placement.node or "")
        reason = demand_reason(demand, node) if node else None
        first = f"{_name(menu, placement.node)} has no room for {want}" + (
            f" ({reason})." if reason else "."
        )
    elif gpus and placement.gpu_model:
        model = _short_model(placement.gpu_model)
        free = placement.gpus_free
        first = (
            f"No node has room for {want} on {model} now ({free} free in all)."
            if free
            else f"No {model} is free now."
        )
    else:
        first = f"No node has room for {want} right now."
    if not (gpus and placement.gpu_model):
        return (
            first
            if placement.kind == "node"
            else f"{first[:-1]}; choose fewer CPUs or less memory."
        )
    same_model = [
        p
        for p in menu.placements
        if p.kind == "gpu"
        and p.gpu_resource == resource
        and p.gpu_product == placement.gpu_product
        and p is not placement
    ]
    elsewhere = [
        row for p in same_model for row in fits(p, demand) if row["node"] != placement.node
    ]
    if elsewhere:
        best = max(elsewhere, key=lambda row: row["free"].get(resource or "", 0))
        count = best["free"].get(resource or "", 0)
        return f"{first} {count} {'are' if count != 1 else 'is'} free on {best['node']}."
    others = [
        p
        for p in menu.placements
        if p.kind == "gpu"
        and p.gpu_product != placement.gpu_product
        and fits(p, demand_for(settings, p, cpu, memory_gib, gpus))
    ]
    if others:
        return f"{first} {others[0].gpu_model} has room: choose it, or fewer GPUs."
    return f"{first} No GPU node has room for {want} right now."
