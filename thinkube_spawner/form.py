"""What the form template gets: the menu as a kubespawner profile (its options are the
form's fields, named as kubespawner names them), plus the data the page's script uses to
narrow the choices in the browser. Pure."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from thinkube_core.quantity import QuantityError, parse_quantity
from thinkube_core.scheduling import PODS, rules_reason
from thinkube_core.waiting import WAIT_OPTION, WAIT_PREFIX, wants_wait

from .menu import (
    GIB,
    ON_DEMAND,
    PROFILE_SLUG,
    SPOT,
    Choice,
    Menu,
    Placement,
    demand_for,
    demand_shape,
    fits,
    pod_for,
    within_cap,
)

TEMPLATES = Path(__file__).parent / "templates"
WAIT_GROUP = "Wait for a GPU"

CLOUD_STORAGE_NOTE = (
    "A RunPod cloud server runs outside the lab: it does not have the lab's shared storage "
    "(notebooks, datasets, models), and its files are gone when it stops. Keep your work "
    "in git or download it before you stop."
)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _placement_data(menu: Menu, placement: Placement) -> dict:
    """What the page's script checks choices against: the placement's frontier (a handful of
    rows, not 1,000 nodes) and how a choice becomes the pod's demand there."""
    data: dict[str, Any] = {"kind": placement.kind, "gpu_resource": placement.gpu_resource}
    if placement.kind != "cloud":
        add, floor = demand_shape(menu.settings, placement)
        data.update(frontier=placement.frontier, add=add, floor=floor)
    return data


# -- waiting for a GPU ------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitOffer:
    """A full GPU place a person may wait for: "Wait for the next free A100" (any node that
    takes the server) or "Wait for a GPU on gpu-a". `capacity` holds the allocatable room
    of the nodes it could run on (frontier rows, as if empty): what it could ever hold."""

    key: str  # the form's value: "wait:<placement key>"
    placement: Placement
    label: str  # what it waits for, for people and the queue
    text: str  # the option's text, with how many wait and the estimate
    waiting: int | None
    eta_text: str | None
    capacity: list[dict[str, Any]]


def _allocatable_units(node: Mapping[str, Any]) -> dict[str, int]:
    units = {}
    for name, amount in (node.get("allocatable") or {}).items():
        if name != PODS:
            units[name] = round(float(amount) * 1000) if name == "cpu" else int(amount)
    return units


def _capacity_rows(menu: Menu, placement: Placement) -> list[dict[str, Any]]:
    """The allocatable room of the nodes whose rules take this placement's pod."""
    settings = menu.settings
    cpu, memory, gpus = (
        min(settings.cpu_choices, default=0),
        min(settings.memory_choices_gib, default=0),
        min((g for g in settings.gpu_choices if g > 0), default=1),
    )
    rules = pod_for(settings, placement, cpu, memory, gpus).rules
    names = [placement.node] if placement.node else list(menu.nodes)
    rows = []
    for name in names:
        node = menu.nodes.get(name or "")
        if node is None or rules_reason(rules, node) is not None:
            continue
        units = _allocatable_units(node)
        if units.get(placement.gpu_resource or "", 0) > 0:
            rows.append({"node": name, "free": units})
    return rows


def wait_targets(menu: Menu) -> list[Placement]:
    """The lab's GPU places that are full now and that a server could run on once GPUs
    free: a GPU model no node of which has room, a GPU node with no GPU free."""
    targets = []
    for placement in menu.placements:
        if (
            not placement.gpu_resource
            or placement.kind not in ("gpu", "node")
            or not placement.taking
        ):
            continue
        if placement.kind == "gpu" and placement.disabled:
            targets.append(placement)
        elif placement.kind == "node" and not menu.settings.single_machine:
            node = menu.nodes.get(placement.node or "") or {}
            free_gpus = (node.get("free") or {}).get(placement.gpu_resource, 0)
            if placement.disabled or free_gpus <= 0:
                targets.append(placement)
    return targets


def wait_label(placement: Placement, single_machine: bool = False) -> str:
    """What a request to wait for this place waits for, in words."""
    model = placement.gpu_model or "GPU"
    if placement.kind == "node" and not single_machine:
        return f"a GPU on {placement.node} ({model})"
    return f"the next free {model}" + ("" if single_machine else " (any node)")


def wait_offers(menu: Menu, estimates: Mapping[str, Any] | None) -> list[WaitOffer]:
    """What the form offers instead of only greying a full GPU place out, with the queue's
    estimates (`GET api/v1/waiting/estimates`: per model and node, how many wait and when a
    GPU may free). None: the hub's queue cannot be asked, so no place is offered to wait
    for."""
    if estimates is None:
        return []
    models = {
        (m.get("resource"), m.get("product")): m
        for m in estimates.get("models") or ()
        if isinstance(m, Mapping)
    }
    nodes = estimates.get("nodes") or {}
    here = menu.settings.single_machine
    offers = []
    for placement in wait_targets(menu):
        capacity = _capacity_rows(menu, placement)
        if not capacity:
            continue
        model = _short_gpu_model(placement.gpu_model or "GPU")
        label = wait_label(placement, here)
        if placement.kind == "gpu":
            estimate = models.get((placement.gpu_resource, placement.gpu_product)) or {}
            text = f"Wait for the next free {model}"
        else:
            estimate = nodes.get(placement.node) or {}
            text = f"Wait for a GPU on {placement.node} ({model})"
            if here:
                text = f"Wait for the next free {model}"
        waiting = estimate.get("waiting")
        eta = estimate.get("eta_text") or "unknown"
        parts = []
        if isinstance(waiting, int):
            parts.append(f"{waiting} waiting")
        parts.append(f"expected start {eta}")
        offers.append(
            WaitOffer(
                WAIT_PREFIX + placement.key,
                placement,
                label,
                f"{text} — {', '.join(parts)}",
                waiting if isinstance(waiting, int) else None,
                eta,
                capacity,
            )
        )
    return offers


def _fits_wait(
    menu: Menu, offers: list[WaitOffer], cpu: float | None, memory_gib: float | None, gpus: int
) -> bool:
    """Whether a server of this size could wait for one of these places (unset amounts
    take the smallest offered)."""
    settings = menu.settings
    cpu = min(settings.cpu_choices, default=0) if cpu is None else cpu
    memory = min(settings.memory_choices_gib, default=0) if memory_gib is None else memory_gib
    gpus = gpus or min((g for g in settings.gpu_choices if g > 0), default=1)
    for offer in offers:
        demand = demand_for(settings, offer.placement, cpu, memory, gpus)
        if any(
            all(row["free"].get(n, 0) >= u for n, u in demand.items() if u > 0 and n != PODS)
            for row in offer.capacity
        ):
            return True
    return False


def _short_gpu_model(model: str) -> str:
    return model.removeprefix("NVIDIA ").removeprefix("GeForce ")


def _wait_data(menu: Menu, offer: WaitOffer) -> dict:
    """What the page's script checks a choice to wait with: the place's pod as for its
    placement, and what its nodes could ever hold (their allocatable room)."""
    data = _placement_data(menu, offer.placement)
    data.update(wait=True, frontier=offer.capacity, label=offer.label)
    return data


def _server_units(menu: Menu) -> dict[str, dict[str, int]]:
    """Each CPU and memory value's request of the server container, in scheduler units."""
    settings, anywhere = menu.settings, menu.placements[0]
    return {
        "cpu": {
            _fmt(v): pod_for(settings, anywhere, v, 0, 0).notebook.get("cpu", 0)
            for v in settings.cpu_choices
        },
        "memory": {
            _fmt(v): pod_for(settings, anywhere, 0, v, 0).notebook.get("memory", 0)
            for v in settings.memory_choices_gib
        },
    }


def _lab_placements(menu: Menu) -> list[Placement]:
    return [p for p in menu.placements if p.kind != "cloud"]


def room_for(
    menu: Menu, cpu: float | None = None, memory_gib: float | None = None, gpus: int = 0
) -> list[tuple[Placement, dict]]:
    """(placement, frontier row) pairs with room for such a server; unset amounts take the
    smallest offered."""
    settings = menu.settings
    cpu = min(settings.cpu_choices, default=0) if cpu is None else cpu
    memory = min(settings.memory_choices_gib, default=0) if memory_gib is None else memory_gib
    found = []
    for placement in _lab_placements(menu):
        if gpus and not placement.gpu_resource:
            continue
        if placement.kind == "gpu" and not gpus:
            continue
        for row in fits(placement, demand_for(settings, placement, cpu, memory, gpus)):
            found.append((placement, row))
    return found


def fits_anywhere(
    menu: Menu, cpu: float | None = None, memory_gib: int | None = None, gpus: int = 0
) -> bool:
    return bool(room_for(menu, cpu, memory_gib, gpus))


def _most_free(menu: Menu, resource: str | None, gpu: bool = False) -> tuple[int, str, str] | None:
    """The most of one resource free on one node that takes a server: (units, node, model)."""
    best = None
    for placement in _lab_placements(menu):
        if gpu and placement.kind != "gpu":
            continue
        name = placement.gpu_resource if gpu else resource
        for row in placement.frontier:
            amount = row["free"].get(name or "", 0)
            if best is None or amount > best[0]:
                best = (amount, row["node"], placement.gpu_model or "")
    return best


def room_notes(menu: Menu, options: dict[str, dict]) -> list[str]:
    """For each value the form disables for lack of room, what there is instead:
    "4 GPUs: the largest free block is 2 (A100) on gpu-node-03"."""
    notes = []
    here = menu.settings.single_machine
    for key, resource in (("cpu", "cpu"), ("memory", "memory"), ("gpus", None)):
        full = [
            value
            for value, choice in options[key]["choices"].items()
            if choice["disabled"] and choice.get("reason") == NO_ROOM
        ]
        if not full:
            continue
        best = _most_free(menu, resource, gpu=resource is None)
        label = options[key]["choices"][full[0]]["display_name"]
        if best is None or best[0] <= 0:
            notes.append(f"{label}: nothing is free right now.")
            continue
        amount, node, model = best
        where = "" if here else f" on one node ({node})"
        if resource == "cpu":
            notes.append(f"{label}: at most {amount / 1000:g} CPU free{where}.")
        elif resource == "memory":
            gib = f"{amount / GIB:.1f}".removesuffix(".0")
            notes.append(f"{label}: at most {gib} GiB free{where}.")
        else:
            model = f" ({model})" if model else ""
            on = "" if here else f" on {node}"
            notes.append(f"{label}: the largest free block is {amount}{model}{on}.")
    return notes


NO_ROOM = "no node has room"


def _choices(values, label, selected: str | None, why_not, default_index: int) -> dict[str, dict]:
    """One select's choices; `why_not(value)` says why a value cannot be chosen, or None."""
    keys = [_fmt(v) for v in values]
    reasons = {key: why_not(value) for key, value in zip(keys, values, strict=True)}
    chosen = (
        selected if selected in keys else keys[min(default_index, len(keys) - 1)] if keys else None
    )
    if chosen is not None and reasons[chosen] and not all(reasons.values()):
        # A disabled option is not submitted: preselect the largest usable value below it
        # (the first usable one when there is none), as the page's script does.
        below = [key for key in keys[: keys.index(chosen)] if not reasons[key]]
        chosen = below[-1] if below else next(key for key in keys if not reasons[key])
    return {
        key: {
            "display_name": label(value),
            "default": key == chosen,
            "disabled": bool(reasons[key]),
            "reason": reasons[key],
        }
        for key, value in zip(keys, values, strict=True)
    }


def menu_profile(
    menu: Menu,
    user_options: dict[str, Any],
    cloud_cap: float = 0.0,
    waits: list[WaitOffer] | None = None,
) -> dict:
    """One kubespawner profile whose options are the menu, last choices preselected.
    Cloud offers are listed when within `cloud_cap` (this person's USD/h; 0: none); how
    many are over it is said once, not as a list of greyed-out offers. `waits` are the full
    GPU places offered to wait for (`wait_offers`), listed in a group of their own."""
    settings = menu.settings
    waits = list(waits or ())
    placements = [p for p in menu.placements if p.kind != "cloud" or within_cap(p, cloud_cap)]
    over_cap = sum(
        1
        for p in menu.placements
        if p.kind == "cloud" and cloud_cap > 0 and not within_cap(p, cloud_cap)
    )
    where_reasons = {p.key: p.reason if p.disabled else None for p in placements}
    offered = {p.key: p for p in placements}
    cloud_listed = any(p.kind == "cloud" for p in placements)
    last = {k: str(v) for k, v in (user_options or {}).items() if v is not None}
    default_image = next(
        (i["name"] for i in menu.images if i.get("default")),
        menu.images[0]["name"] if menu.images else None,
    )
    image_choice = (
        last.get("image")
        if any(i["name"] == last.get("image") for i in menu.images)
        else default_image
    )
    wait_keys = {w.key: w for w in waits}
    waited = WAIT_PREFIX + str(last.get("where")) if wants_wait(last) else None
    where_choice = last.get("where") if last.get("where") in offered else "cpu"
    where = offered.get(where_choice)
    if waited in wait_keys:
        where_choice, where = waited, wait_keys[waited].placement  # they waited for it last
    elif where is None or where_reasons.get(where.key):  # not submittable: preselect another
        usable = [p for p in placements if not where_reasons[p.key]]
        similar = [
            p for p in usable if where and p.gpu_product and p.gpu_product == where.gpu_product
        ]
        where = (similar or usable or [where])[0]
        where_choice = where.key if where else where_choice
    # A GPU model placement needs GPUs: without a last choice, preselect the fewest offered.
    gpu_default = (
        next((i for i, v in enumerate(settings.gpu_choices) if v > 0), 0)
        if where and (where.kind == "gpu" or where_choice in wait_keys)
        else 0
    )

    # Without JavaScript the image can change after the page is made, so only room greys a
    # value out here; the page's script adds the chosen image's limits, and the check at
    # submit enforces them either way.
    # A size that fits nowhere now may still wait for a full place that could hold it.
    def cpu_reason(value: float) -> str | None:
        room = fits_anywhere(menu, cpu=value) or _fits_wait(menu, waits, value, None, 0)
        return None if room else NO_ROOM

    def memory_reason(value: float) -> str | None:
        room = fits_anywhere(menu, memory_gib=value) or _fits_wait(menu, waits, None, value, 0)
        return None if room else NO_ROOM

    def gpus_reason(value: int) -> str | None:
        room = fits_anywhere(menu, gpus=value) or (
            value > 0 and _fits_wait(menu, waits, None, None, value)
        )
        return None if room else NO_ROOM

    options = {
        "image": {
            "display_name": "Image",
            "choices": {
                i["name"]: {
                    "display_name": i.get("display_name", i["name"]),
                    "description": i.get("description", ""),
                    "default": i["name"] == image_choice,
                    "gpu_required": bool((i.get("metadata") or {}).get("gpu_required")),
                }
                for i in menu.images
            },
        },
        "where": {
            "display_name": "Where",
            "groups": list(dict.fromkeys(p.group for p in placements))
            + ([WAIT_GROUP] if waits else []),
            "choices": {
                **{
                    p.key: {
                        "display_name": p.label,
                        "default": p.key == where_choice,
                        "disabled": bool(where_reasons[p.key]),
                        "reason": where_reasons[p.key],
                        "group": p.group,
                        "kind": p.kind,
                    }
                    for p in placements
                },
                **{
                    w.key: {
                        "display_name": w.text,
                        "default": w.key == where_choice,
                        "disabled": False,
                        "reason": None,
                        "group": WAIT_GROUP,
                        "kind": w.placement.kind,
                        "wait": True,
                    }
                    for w in waits
                },
            },
        },
        **({"pricing": _pricing_option(last.get("pricing"))} if cloud_listed else {}),
        "cpu": {
            "display_name": "CPUs",
            "choices": _choices(
                settings.cpu_choices,
                lambda v: f"{_fmt(v)} CPU{'s' if v != 1 else ''}",
                last.get("cpu"),
                cpu_reason,
                1,
            ),
        },
        "memory": {
            "display_name": "Memory",
            "choices": _choices(
                settings.memory_choices_gib,
                lambda v: f"{v} GiB",
                last.get("memory"),
                memory_reason,
                2,
            ),
        },
        "gpus": {
            "display_name": "GPUs",
            "choices": _choices(
                settings.gpu_choices,
                lambda v: f"{v} GPU{'s' if v != 1 else ''}" if v else "No GPU",
                last.get("gpus"),
                gpus_reason,
                gpu_default,
            ),
        },
    }
    return {
        "display_name": "Thinkube",
        "slug": PROFILE_SLUG,
        "default": True,
        "profile_options": options,
        "thinkube": {
            "generated_at": menu.generated_at,
            "stale": menu.stale,
            "age_seconds": menu.age_seconds,
            "nodes_hidden": menu.nodes_hidden,
            "room_notes": room_notes(menu, options),
            "units": _server_units(menu),
            "images": {i["name"]: _image_limits(i) for i in menu.images},
            "placements": {
                **{p.key: _placement_data(menu, p) for p in placements},
                **{w.key: _wait_data(menu, w) for w in waits},
            },
            "waits": [
                {"key": w.key, "label": w.label, "waiting": w.waiting, "eta_text": w.eta_text}
                for w in waits
            ],
            # where the cheapest cloud offer for a full choice is shown, when there is one
            "cloud_instead": None,
            "cloud_note": CLOUD_STORAGE_NOTE if cloud_listed else None,
            "cloud_unavailable": menu.cloud_note if cloud_cap > 0 else None,
            "cloud_over_cap": (
                f"{over_cap} more cloud offer{'s are' if over_cap != 1 else ' is'} over your "
                f"limit of ${cloud_cap:.2f}/h."
                if over_cap
                else None
            ),
        },
    }


def _pricing_option(selected: str | None) -> dict:
    """How a cloud GPU is rented; the server ignores it for the lab's own nodes."""
    chosen = selected if selected in (ON_DEMAND, SPOT) else ON_DEMAND
    labels = {
        ON_DEMAND: "On demand (runs until you stop it)",
        SPOT: "Spot (cheaper; RunPod may interrupt it)",
    }
    return {
        "display_name": "Cloud pricing",
        "choices": {
            key: {"display_name": label, "default": key == chosen} for key, label in labels.items()
        },
    }


def _image_limits(image: dict) -> dict:
    metadata = dict(image.get("metadata") or {})
    try:
        if metadata.get("mem_limit"):
            metadata["mem_limit_bytes"] = int(parse_quantity(metadata["mem_limit"]))
    except QuantityError:
        pass  # the catalog validates entries; the server checks the choice either way
    return metadata


def unavailable_profile(message: str) -> dict:
    """What the form shows when the availability service cannot be reached: no choices."""
    return {
        "display_name": "Thinkube",
        "slug": PROFILE_SLUG,
        "default": True,
        "profile_options": {},
        "thinkube": {"error": message},
    }


def progress_message(event: dict, choice: Choice | None) -> str:
    reason, message = event.get("reason", ""), event.get("message", "")
    if reason == "Scheduled":
        node = message.rsplit(" to ", 1)[-1]
        model = (
            f" ({choice.placement.gpu_model})"
            if choice and choice.gpus and choice.placement.gpu_model
            else ""
        )
        return f"Scheduled on {node}{model}"
    if reason == "FailedScheduling":
        return f"Waiting for a node: {message}"
    if reason in ("Pulling", "Pulled"):
        return f"Pulling image: {message}"
    if reason in ("Created", "Started"):
        return f"Starting: {message}"
    return f"[{event.get('type', 'Normal')}] {reason}: {message}"


# -- rendering --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def form_template(search_path: tuple[str, ...], template_source: str = "") -> jinja2.Template:
    """The spawn form's template, found as kubespawner finds it (`template_source`, else
    form.html on `search_path`, else kubespawner's own) and compiled once per process:
    building it for every render costs more than rendering the page. jinja still notices
    a changed file on disk."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(list(search_path)),
                jinja2.PackageLoader("kubespawner", "templates"),
            ]
        )
    )
    # As kubespawner: keep the profile's key order in `tojson` (it is the display order).
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    if template_source:
        return env.from_string(template_source)
    return env.get_template("form.html")


def render_form(
    profile: dict,
    user_options: dict | None = None,
    before: str = "",
    search_path: tuple[str, ...] = (str(TEMPLATES),),
    template_source: str = "",
) -> str:
    """templates/form.html rendered with `profile_list` (the one profile) and
    `user_options`, as kubespawner renders a profile form; `search_path` and
    `template_source` are kubespawner's `additional_profile_form_template_paths` and
    `profile_form_template`. `before` is HTML put above the form (escaped by the caller)."""
    template = form_template(search_path, template_source)
    html = before + template.render(profile_list=[profile], user_options=user_options or {})
    return valid_text(html)


def valid_text(text: str) -> str:
    """`text` as it can be sent: whatever text the catalog or the cluster holds (a lone
    surrogate, from a JSON escape, cannot be encoded) comes out as valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def options_from_formdata(formdata: dict[str, list[str]]) -> dict[str, str]:
    """The form's fields (`profile`, `profile-option-thinkube--<key>`) as user_options, the
    same dict kubespawner makes of them. Nothing is checked here: `check_choice` does."""
    prefix = f"profile-option-{PROFILE_SLUG}--"
    options = {"profile": (formdata.get("profile") or [PROFILE_SLUG])[0]}
    for key, values in formdata.items():
        if key.startswith(prefix) and values:
            options[key[len(prefix) :]] = values[0]
    where = options.get("where")
    if isinstance(where, str) and where.startswith(WAIT_PREFIX):
        # "Wait for the next free …": the place, and the wish to wait for it
        options["where"] = where[len(WAIT_PREFIX) :]
        options[WAIT_OPTION] = "1"
    return options


def options_from_querydata(query: dict[str, list[str]]) -> dict[str, str]:
    """The options of a start from the hub's spawn URL (`?opt-where=...&opt-gpus=1`; JupyterHub
    6 hands them over without the `opt-`, 5.5 with it): the same keys as user_options, or the
    form's field names. Nothing is checked here, and an unknown key is kept for
    `check_choice` to name."""
    query = {key.removeprefix("opt-"): values for key, values in query.items()}
    options = options_from_formdata(query)
    prefix = f"profile-option-{PROFILE_SLUG}--"
    for key, values in query.items():
        if key != "profile" and not key.startswith(prefix) and values:
            options.setdefault(key, values[0])
    return options


def _gib_text(amount: float) -> str:
    return f"{amount / GIB:.1f}".removesuffix(".0")


def machine_summary_html(node: dict, memory_enforced: bool) -> str:
    """A line above the single-machine form: this machine's CPUs, memory and GPUs (or why
    there are none), and whether the memory choice is enforced or advisory."""
    from html import escape

    capacity, available = node["capacity"], node["available"]
    local = node.get("local") or {}
    cpus = int(capacity["cpu"])
    parts = [
        f"{cpus} CPU{'s' if cpus != 1 else ''} ({int(available['cpu'])} free)",
        f"{_gib_text(capacity['memory'])} GiB memory ({_gib_text(available['memory'])} GiB free)",
    ]
    gpus = local.get("gpus") or []
    if gpus:
        free = sum(1 for g in gpus if not g.get("taken"))
        names = ", ".join(dict.fromkeys(g["name"] for g in gpus))
        parts.append(f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} ({names}; {free} free)")
    else:
        parts.append(f"no GPU ({local.get('gpu_status') or 'none found'})")
    memory = (
        "Memory is enforced: a server that uses more than its choice is stopped by the kernel."
        if memory_enforced
        else "Memory is advisory on this machine (no cgroup v2 / systemd scope to enforce it): "
        "please stay within your choice."
    )
    return (
        f'<p id="thinkube-machine" class="alert alert-info">This machine ({escape(node["name"])}): '
        f'{escape(", ".join(parts))}.<br><span id="thinkube-memory-note">{escape(memory)}</span></p>'
    )
