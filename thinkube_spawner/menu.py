"""The spawn menu: what a person may choose, built from live availability, and the check of
a choice against fresh data. Pure functions, no I/O: the spawner feeds them the service's
documents (nodes, summary, image catalog).

A choice is `user_options` as kubespawner's form posts it and the REST API takes it:
`{"profile": "thinkube", "image": "scipy", "where": "gpu:nvidia-a100-sxm4-80gb",
"cpu": "4", "memory": "16", "gpus": "1"}`. Every value is looked up in the menu; nothing a
user sends reaches a pod spec without being one of the menu's own values.

Cloud GPUs (RunPod offers, when the hub has cloud configured) are placements too, keyed
`cloud:<offer key>`, with a `pricing` of `on-demand` or `spot`. The menu holds every offer;
what one person may choose depends on their price cap, given to `check_choice` (and to the
form) per person, since a menu is shared by all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .runpod.offers import Offer

GIB = 1024**3
GPU_TAINT_KEY = "nvidia.com/gpu"
PROFILE_SLUG = "thinkube"
ANY_CPU = "cpu"
CLOUD_PREFIX = "cloud:"
CLOUD_GROUP = "RunPod cloud"
ON_DEMAND, SPOT = "on-demand", "spot"


class ChoiceError(ValueError):
    """A choice that cannot be spawned; the message is meant for the person who made it.
    `capacity` is true when the choice is valid but does not fit right now."""

    def __init__(self, message: str, capacity: bool = False):
        super().__init__(message)
        self.capacity = capacity


@dataclass(frozen=True)
class MenuSettings:
    cpu_choices: tuple[float, ...] = (1, 2, 4, 8, 16, 32)
    memory_choices_gib: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)
    gpu_choices: tuple[int, ...] = (0, 1, 2, 4, 8)
    cpu_guarantee_ratio: float = 0.5
    mem_guarantee_ratio: float = 1.0
    max_nodes_listed: int = 50
    tolerated_taints: tuple[str, ...] = (GPU_TAINT_KEY,)
    # One machine, no cluster (ThinkubeLocalSpawner): say "this machine", not "any node".
    single_machine: bool = False


@dataclass
class Slot:
    """Free room on one node, in what the scheduler counts: requests."""

    node: str
    cpu: float
    memory: int
    gpus: dict[str, int]  # GPU resource name -> free count
    gpu_taint_only: bool  # only taints we tolerate when asking for GPUs
    untainted: bool  # a CPU-only pod can go here


@dataclass
class Placement:
    key: str
    kind: str  # "cpu" | "gpu" | "node" | "cloud"
    label: str
    node: str | None = None
    gpu_resource: str | None = None
    gpu_product: str | None = None
    gpu_product_label: str | None = None  # the node label that carries the product
    gpu_model: str | None = None
    gpu_memory_mib: int | None = None
    slots: list[Slot] = field(default_factory=list)
    disabled: bool = False
    reason: str | None = None
    group: str = ""
    offer: Offer | None = None  # a cloud placement's RunPod offer

    def fits(self, cpu_request: float, memory_request: int, gpus: int) -> list[Slot]:
        """The nodes of this placement where such a pod fits now."""
        found = []
        for slot in self.slots:
            if gpus and not (
                self.gpu_resource
                and slot.gpus.get(self.gpu_resource, 0) >= gpus
                and slot.gpu_taint_only
            ):
                continue
            if not gpus and not (slot.untainted or self.kind == "node" and slot.gpu_taint_only):
                continue
            if slot.cpu + 1e-9 >= cpu_request and slot.memory >= memory_request:
                found.append(slot)
        return found


@dataclass
class Menu:
    images: list[dict]
    placements: list[Placement]
    settings: MenuSettings
    nodes_hidden: int = 0  # nodes left out of the list (cap)
    unlisted_nodes: frozenset[str] = frozenset()  # their names: schedulable, not offered
    generated_at: str = ""
    stale: bool = False
    age_seconds: float = 0.0
    cloud_note: str | None = None  # why no cloud offer is listed although cloud is on

    def placement(self, key: str) -> Placement | None:
        return next((p for p in self.placements if p.key == key), None)

    def image(self, name: str) -> dict | None:
        return next((i for i in self.images if i["name"] == name), None)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _gib(amount: int) -> str:
    value = amount / GIB
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _cpu(amount: float) -> str:
    return f"{amount:.0f}" if amount == int(amount) or amount >= 10 else f"{amount:.1f}"


def _short_model(model: str) -> str:
    return model.removeprefix("NVIDIA ").removeprefix("GeForce ")


def slot_of(node: Mapping[str, Any], tolerated: Iterable[str]) -> Slot:
    taints = [t for t in node.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
    gpus = {r["name"]: r["free"] for r in ((node.get("gpu") or {}).get("resources") or [])}
    return Slot(
        node=node["name"],
        cpu=float(node["available"]["cpu"]),
        memory=int(node["available"]["memory"]),
        gpus=gpus,
        gpu_taint_only=all(t.get("key") in tolerated for t in taints),
        untainted=not taints,
    )


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
            text += f" ({physical} GPU{'s' if physical != 1 else ''} shared {gpu['replicas']} ways)"
    return text


def _room(node: Mapping[str, Any]) -> tuple:
    gpu = node.get("gpu") or {}
    return (
        -(gpu.get("free_count") or 0),
        -node["available"]["cpu"],
        -node["available"]["memory"],
        node["name"],
    )


def cloud_placements(cloud: Mapping[str, Any] | None) -> tuple[list[Placement], str | None]:
    """The service's cloud section (`{"configured", "offers", "error", ...}`) as placements,
    in the service's order (cheapest first), and a note when cloud is on but nothing can be offered. Malformed
    offers are left out."""
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
        placements.append(
            Placement(
                CLOUD_PREFIX + offer.key,
                "cloud",
                f"RunPod {offer.cloud_type.lower()} cloud: {offer.label()}",
                gpu_model=offer.display_name,
                gpu_memory_mib=int(offer.vram_gb * 1024) if offer.vram_gb else None,
                disabled=offer.price_per_hour is None and offer.spot_price_per_hour is None,
                reason=None,
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


def build_menu(
    nodes: list[dict],
    summary: Mapping[str, Any],
    images: list[dict],
    settings: MenuSettings,
    freshness: Mapping[str, Any] | None = None,
    cloud: Mapping[str, Any] | None = None,
) -> Menu:
    """Everything the form offers, with the choices that cannot fit anywhere disabled;
    `cloud` is the service's cloud section, if any."""
    freshness = freshness or {}
    smallest = _smallest_request(settings)
    usable = [n for n in nodes if n.get("schedulable")]
    slots = {n["name"]: slot_of(n, settings.tolerated_taints) for n in usable}
    ordered_images = sorted(
        images, key=lambda i: (not i.get("default"), i.get("display_name", i["name"]).lower())
    )
    cpu_slots = [s for s in slots.values() if s.untainted]
    one = settings.single_machine
    anywhere = Placement(
        ANY_CPU,
        "cpu",
        "CPU only (no GPU)" if one else "Any node (CPU only)",
        slots=cpu_slots,
        group="This machine" if one else "Anywhere",
    )
    if not cpu_slots:
        anywhere.disabled, anywhere.reason = True, "no node without GPUs is schedulable"
    elif not anywhere.fits(smallest[0], smallest[1], 0):
        anywhere.disabled, anywhere.reason = True, "full"
    placements = [anywhere]
    model_of_node: dict[str, str] = {}
    for model in summary.get("gpu_models") or []:
        members = [
            n
            for n in usable
            if any(
                r["name"] == model["resource"] and r.get("product") == model.get("product")
                for r in ((n.get("gpu") or {}).get("resources") or [])
            )
        ]
        for n in members:
            model_of_node.setdefault(n["name"], model["model"])
        memory = f", {round(model['memory_mib'] / 1024)} GiB" if model.get("memory_mib") else ""
        memory += ", shared" if model.get("shared") else ""  # time-sliced or MPS slots
        key = (
            "gpu:"
            + slug(model.get("product") or model["model"])
            + (
                ""
                if model["resource"] == "nvidia.com/gpu"
                else "@" + slug(model["resource"].split("/")[-1])
            )
        )
        placement = Placement(
            key,
            "gpu",
            f"A free {model['model']} ({model['free']} free{memory})"
            if one
            else f"Any node with a free {model['model']} ({model['free']} free on "
            f"{model['nodes_with_free']} node{'s' if model['nodes_with_free'] != 1 else ''}{memory})",
            gpu_resource=model["resource"],
            gpu_product=model.get("product"),
            gpu_product_label=_product_label(model["resource"]),
            gpu_model=model["model"],
            gpu_memory_mib=model.get("memory_mib"),
            slots=[slots[n["name"]] for n in members],
            group="This machine's GPUs" if one else "GPU models",
        )
        if model["free"] == 0:
            placement.disabled, placement.reason = True, "none free right now"
        elif not placement.fits(*smallest):
            placement.disabled, placement.reason = True, "full"  # free GPUs, no CPU/memory left
        placements.append(placement)
    # Specific nodes: grouped by GPU model, roomiest first, capped.
    listed = sorted(usable, key=lambda n: (model_of_node.get(n["name"], "~CPU nodes"), _room(n)))
    hidden = max(0, len(listed) - settings.max_nodes_listed)
    listed = sorted(listed, key=_room)
    unlisted = frozenset(n["name"] for n in listed[settings.max_nodes_listed :])
    listed = listed[: settings.max_nodes_listed]
    listed.sort(key=lambda n: (model_of_node.get(n["name"], "~"), _room(n)))
    for node in listed:
        gpu = node.get("gpu") or {}
        resource = next((r for r in gpu.get("resources") or [] if r.get("allocatable")), None)
        slot = slots[node["name"]]
        full = (
            slot.cpu + 1e-9 < smallest[0]
            or slot.memory < smallest[1]
            or slot.cpu <= 0
            or slot.memory <= 0
            or node.get("pod_count", 0) >= node.get("pods_allocatable", 1 << 30)
        )
        placements.append(
            Placement(
                f"node:{node['name']}",
                "node",
                _node_label(node),
                node=node["name"],
                gpu_resource=resource["name"] if resource else None,
                gpu_product=resource.get("product") if resource else None,
                gpu_model=resource["model"] if resource else None,
                gpu_memory_mib=resource.get("memory_mib") if resource else None,
                slots=[slots[node["name"]]],
                disabled=full or not slots[node["name"]].gpu_taint_only,
                reason="full"
                if full
                else None
                if slots[node["name"]].gpu_taint_only
                else "tainted",
                group="This machine"
                if one
                else f"Nodes with {model_of_node[node['name']]}"
                if node["name"] in model_of_node
                else "CPU nodes",
            )
        )
    cloud_listed, cloud_note = cloud_placements(cloud)
    return Menu(
        images=ordered_images,
        placements=placements + cloud_listed,
        settings=settings,
        nodes_hidden=hidden,
        unlisted_nodes=unlisted,
        generated_at=str(freshness.get("generated_at", "")),
        stale=bool(freshness.get("stale")),
        age_seconds=float(freshness.get("age_seconds") or 0.0),
        cloud_note=cloud_note,
    )


def _smallest_request(settings: MenuSettings) -> tuple[float, int, int]:
    """Requests of the smallest server the menu offers: cpu, memory (bytes), GPUs (if any)."""
    cpu = min(settings.cpu_choices, default=0) * settings.cpu_guarantee_ratio
    memory = int(min(settings.memory_choices_gib, default=0) * GIB * settings.mem_guarantee_ratio)
    return cpu, memory, min((g for g in settings.gpu_choices if g > 0), default=1)


def _product_label(resource: str) -> str:
    if resource.startswith("nvidia.com/mig-"):
        return f"{resource}.product"
    return "nvidia.com/gpu.product"


# -- checking a choice --------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A validated choice, every part taken from the menu."""

    image: dict
    placement: Placement
    cpu: float
    memory_gib: int
    gpus: int
    node: str | None  # pinned node, if the person chose one
    cpu_request: float
    memory_request: int
    spot: bool = False  # a cloud choice's pricing

    @property
    def cloud(self) -> bool:
        return self.placement.kind == "cloud"

    def as_user_options(self) -> dict[str, str]:
        """The choice as the form's own values: the keys kubespawner looks up in the profile's
        choices (a REST call may send `4`, `"4.0"` or `" 4"`; the profile only has `"4"`)."""
        options = {
            "profile": PROFILE_SLUG,
            "image": self.image["name"],
            "where": self.placement.key,
            "cpu": _fmt(self.cpu),
            "memory": _fmt(self.memory_gib),
            "gpus": _fmt(self.gpus),
        }
        if self.cloud:
            options["pricing"] = SPOT if self.spot else ON_DEMAND
        return options


def _number(
    user_options: Mapping[str, Any], key: str, allowed: Iterable[float], what: str, default: float
) -> float:
    """One of the offered values; a missing value (REST API) takes the default."""
    raw = user_options.get(key)
    allowed = [float(a) for a in allowed]
    if raw is None or raw == "":
        return default
    problem = f"{what} must be one of {', '.join(_fmt(a) for a in allowed)}; got {str(raw)[:40]!r}."
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


def _fmt(value: float) -> str:
    return f"{value:g}"


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
    known = {"profile", "image", "where", "cpu", "memory", "gpus", "pricing"}
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
    if metadata.get("cpu_limit") and cpu > float(metadata["cpu_limit"]):
        raise ChoiceError(
            f"{image['display_name']} allows at most {_fmt(float(metadata['cpu_limit']))} CPUs."
        )
    if metadata.get("mem_limit"):
        from hub_service.quantity import parse_quantity

        if memory * GIB > parse_quantity(metadata["mem_limit"]):
            raise ChoiceError(
                f"{image['display_name']} allows at most {metadata['mem_limit']} of memory."
            )
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
    if placement.reason == "tainted":
        raise ChoiceError(
            f"{placement.node} does not take notebook servers (it has taints this hub does not tolerate)."
        )

    cpu_request = cpu * settings.cpu_guarantee_ratio
    memory_request = int(memory * GIB * settings.mem_guarantee_ratio)
    if not placement.fits(cpu_request, memory_request, gpus):
        raise ChoiceError(
            no_room_message(placement, menu, cpu_request, memory_request, gpus), capacity=True
        )
    return Choice(image, placement, cpu, memory, gpus, placement.node, cpu_request, memory_request)


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
    if cloud_cap <= 0:
        raise ChoiceError("Cloud GPUs are not available to you on this hub.")
    price = offer.price(spot)
    if price is None:
        raise ChoiceError(f"{offer.display_name} has no {pricing} price on RunPod right now.")
    if price > cloud_cap:
        raise ChoiceError(
            f"{offer.display_name} costs ${price:.2f}/h {pricing.replace('-', ' ')}, over your "
            f"cloud limit of ${cloud_cap:.2f}/h."
        )
    return Choice(image, placement, cpu, memory, offer.gpu_count, None, 0.0, 0, spot)


def no_room_message(
    placement: Placement, menu: Menu, cpu_request: float, memory_request: int, gpus: int
) -> str:
    """Say plainly why it does not fit, and where it would."""
    want = f"{_fmt(cpu_request)} CPU and {_gib(memory_request)} GiB" + (
        f" with {gpus} GPU{'s' if gpus != 1 else ''}" if gpus else ""
    )
    if gpus and placement.gpu_model:
        model = _short_model(placement.gpu_model)
        if placement.kind == "node":
            free = placement.slots[0].gpus.get(placement.gpu_resource or "", 0)
            first = f"{placement.node} now has {free} free {model}{'s' if free != 1 else ''}."
        else:
            free = sum(s.gpus.get(placement.gpu_resource or "", 0) for s in placement.slots)
            first = f"No node has room for {want} on {model} now ({free} free in all)."
        others = [
            p
            for p in menu.placements
            if p.kind == "gpu"
            and p.gpu_resource == placement.gpu_resource
            and p.gpu_product == placement.gpu_product
        ]
        candidates = [
            s
            for p in others
            for s in p.fits(cpu_request, memory_request, gpus)
            if s.node != placement.node
        ]
        if candidates:
            best = max(candidates, key=lambda s: s.gpus.get(placement.gpu_resource or "", 0))
            count = best.gpus.get(placement.gpu_resource or "", 0)
            return f"{first} {count} {'are' if count != 1 else 'is'} free on {best.node}."
        alternatives = [
            p
            for p in menu.placements
            if p.kind == "gpu" and p.fits(cpu_request, memory_request, gpus)
        ]
        if alternatives:
            return f"{first} {alternatives[0].gpu_model} has room: choose it, or fewer GPUs."
        return f"{first} No GPU node has room for {want} right now."
    if placement.kind == "node":
        slot = placement.slots[0]
        return f"{placement.node} has {_cpu(slot.cpu)} CPU and {_gib(slot.memory)} GiB free now, not enough for {want}."
    return f"No node has room for {want} right now; choose fewer CPUs or less memory."
