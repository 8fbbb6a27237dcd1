"""The service's own page, for people: what the hub's Services menu opens.

At the service's prefix a browser (``Accept: text/html``) gets an HTML page built from the
same published documents the JSON API serves: each node with CPU, memory and GPU bars (free
of allocatable), the GPU model and live utilisation where DCGM or NVML reports it, how fresh
the data is, the cloud offers with prices, and links to the API. Anything else asking for
the prefix gets the small JSON index as before (the hub's start-up check, scripts).

The page is server-rendered and complete without JavaScript. With JavaScript on, a small
inline script asks for the page again every ``page_refresh_seconds`` with the ``ETag`` it
holds; the ETag is made from the availability version (documents, staleness, cloud offers)
and the page's query, so an unchanged cluster costs a 304 and a changed one a re-render of
the page's live part. Ages tick in the browser between answers.

Many nodes: the table shows ``page_rows`` rows per page, sorted most room first (free GPUs,
then GPU nodes, then free CPU and memory), with a filter form (GET parameters) for the rest.

Everything shown is escaped (jinja autoescape); the text is encoded with lone surrogates
replaced, so no stored name can break the page. Pure functions build the view; the handler
is thin.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from jupyterhub.utils import url_path_join
from tornado import web

from .handlers import RootHandler
from .jobs.views import job_view, queue_view
from .rendering import content_security_policy, read_template, template_environment

if TYPE_CHECKING:
    from .inventory import Published

__all__ = [
    "PageHandler",
    "PageQuery",
    "PageQueryError",
    "bar",
    "duration_text",
    "page_view",
    "parse_query",
    "render_page",
    "select_nodes",
]

GIB = 1024**3
MAX_TEXT_FILTER = 100
MAX_PAGE = 1_000_000
OFFERS_SHOWN = 12
GPU_CHIPS_SHOWN = 8
GPU_FILTERS = {
    "any": "All nodes",
    "yes": "With GPUs",
    "free": "With a free GPU",
    "no": "Without GPUs",
}
SORTS = {"room": "Most room first", "name": "By name"}


# --- the query: filter, sort, page ----------------------------------------------------------


class PageQueryError(ValueError):
    """A GET parameter the page cannot use; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PageQuery:
    text: str = ""  # `q`: part of a node's name, instance type or GPU model
    gpu: str = "any"  # `gpu`: one of GPU_FILTERS
    sort: str = "room"  # `sort`: one of SORTS
    page: int = 1  # `page`: 1-based

    def params(self, **changes: Any) -> str:
        """The query string of this query (with `changes`), defaults left out."""
        query = replace(self, **changes)
        pairs = [
            (name, value)
            for name, value, default in (
                ("q", query.text, ""),
                ("gpu", query.gpu, "any"),
                ("sort", query.sort, "room"),
                ("page", query.page, 1),
            )
            if value != default
        ]
        return "?" + urlencode(pairs) if pairs else "?"


def parse_query(arguments: Mapping[str, str]) -> PageQuery:
    """GET parameters (name -> text) as a PageQuery; PageQueryError for a bad value. Other
    names are ignored."""
    text = arguments.get("q", "").strip()
    if len(text) > MAX_TEXT_FILTER:
        raise PageQueryError("q", f"the search text must be at most {MAX_TEXT_FILTER} characters")
    gpu = arguments.get("gpu", "any").strip() or "any"
    if gpu not in GPU_FILTERS:
        raise PageQueryError("gpu", f"gpu must be one of {', '.join(GPU_FILTERS)}")
    sort = arguments.get("sort", "room").strip() or "room"
    if sort not in SORTS:
        raise PageQueryError("sort", f"sort must be one of {', '.join(SORTS)}")
    page_text = arguments.get("page", "1").strip() or "1"
    if not (page_text.isascii() and page_text.isdigit()) or not 1 <= int(page_text) <= MAX_PAGE:
        raise PageQueryError("page", f"page must be a whole number from 1 to {MAX_PAGE}")
    return PageQuery(text=text, gpu=gpu, sort=sort, page=int(page_text))


def _number(value: Any) -> float:
    """A number from a document; anything else (None, text, NaN) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return value


def _gpu_free(node: Mapping[str, Any]) -> float:
    return _number((node.get("available") or {}).get("gpu"))


def _matches(node: Mapping[str, Any], query: PageQuery) -> bool:
    gpu = node.get("gpu")
    if query.gpu == "yes" and not gpu:
        return False
    if query.gpu == "no" and gpu:
        return False
    if query.gpu == "free" and _gpu_free(node) <= 0:
        return False
    if query.text:
        wanted = query.text.casefold()
        haystack = [node.get("name"), node.get("instance_type")]
        if gpu:
            haystack += [gpu.get("model"), gpu.get("product")]
        return any(isinstance(text, str) and wanted in text.casefold() for text in haystack)
    return True


def _room_key(node: Mapping[str, Any]) -> tuple:
    """Schedulable nodes first; then most free GPUs, GPU nodes, most free CPU and memory."""
    available = node.get("available") or {}
    return (
        not node.get("schedulable"),
        -_gpu_free(node),
        not node.get("gpu"),
        -_number(available.get("cpu")),
        -_number(available.get("memory")),
        str(node.get("name")),
    )


@dataclass(frozen=True)
class Selection:
    rows: list[dict]  # the nodes on this page
    matching: int  # nodes that pass the filter
    total: int  # nodes in the inventory
    page: int  # the page shown (the last one if the query asked for more)
    pages: int
    first: int  # 1-based number of the first row shown (0: none)


def select_nodes(nodes: Iterable[dict], query: PageQuery, rows_per_page: int) -> Selection:
    """The nodes the page shows: filtered, sorted, one page of them. A page past the end
    shows the last page (the cluster may have shrunk since the link was made)."""
    nodes = list(nodes)
    matching = [node for node in nodes if _matches(node, query)]
    if query.sort == "name":
        matching.sort(key=lambda node: str(node.get("name")))
    else:
        matching.sort(key=_room_key)
    rows_per_page = max(1, rows_per_page)
    pages = max(1, -(-len(matching) // rows_per_page))
    page = min(query.page, pages)
    start = (page - 1) * rows_per_page
    shown = matching[start : start + rows_per_page]
    return Selection(shown, len(matching), len(nodes), page, pages, start + 1 if shown else 0)


# --- formatting -----------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """`0 s`, `45 s`, `3 min 20 s`, `12 min`, `2 h 5 min`, `3 d 4 h` (the page's script
    writes the same)."""
    total = max(0, int(_number(seconds)))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if minutes < 10 and secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def cores_text(cores: float) -> str:
    """`8`, `7.5`, `0.25` (cores, at most two decimals)."""
    return f"{round(_number(cores), 2):g}"


def bytes_text(amount: float) -> str:
    """`512 MiB`, `7.5 GiB`, `126 GiB`, `1.5 TiB` (binary units, as kubectl shows)."""
    amount = _number(amount)
    if amount < GIB:
        return f"{amount / 1024**2:.0f} MiB"
    gib = amount / GIB
    if gib >= 1024:
        return f"{gib / 1024:.1f} TiB"
    return f"{gib:.1f} GiB" if gib < 10 else f"{gib:.0f} GiB"


def _trimmed(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0") if value < 10 else f"{value:.0f}"


def bytes_pair_text(part: float, whole: float) -> str:
    """`7.5 of 126 GiB`: both amounts in the unit that suits the whole."""
    part, whole = _number(part), _number(whole)
    unit, size = next(
        ((unit, size) for unit, size in (("TiB", 1024**4), ("GiB", GIB)) if whole >= size),
        ("MiB", 1024**2),
    )
    return f"{_trimmed(part / size)} of {_trimmed(whole / size)} {unit}"


def mib_text(mib: float | None) -> str | None:
    return bytes_text(_number(mib) * 1024**2) if mib else None


def count_text(count: float) -> str:
    return f"{int(_number(count)):,}"


@dataclass(frozen=True)
class Bar:
    """Free of allocatable: how full the bar is, its colour class and its words."""

    percent: float  # width of the free part, 0..100
    level: str  # "roomy", "tight", "full" or "none" (nothing allocatable)
    text: str  # e.g. "12.5 of 64 cores free"


def bar(free: float, allocatable: float, text: str) -> Bar:
    free, allocatable = max(0, _number(free)), max(0, _number(allocatable))
    if allocatable <= 0:
        return Bar(0.0, "none", text)
    share = min(1.0, free / allocatable)
    level = "roomy" if share >= 0.3 else "tight" if share > 0 else "full"
    return Bar(round(100 * share, 1), level, text)


def _cpu_bar(free: float, allocatable: float) -> Bar:
    return bar(free, allocatable, f"{cores_text(free)} of {cores_text(allocatable)} cores free")


def _memory_bar(free: float, allocatable: float) -> Bar:
    return bar(free, allocatable, f"{bytes_pair_text(free, allocatable)} free")


def _gpu_bar(free: float, schedulable: float, unit: str = "GPUs") -> Bar:
    if _number(schedulable) == 1:
        unit = unit.removesuffix("s")  # "1 of 1 GPU free"
    return bar(free, schedulable, f"{count_text(free)} of {count_text(schedulable)} {unit} free")


def _seconds_since(iso: Any, now: float) -> float | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None
    return max(0.0, now - moment)


# --- the view -------------------------------------------------------------------------------


def _gpu_view(node: Mapping[str, Any]) -> dict | None:
    gpu = node.get("gpu")
    if not gpu:
        return None
    capacity, available = node.get("capacity") or {}, node.get("available") or {}
    # one model, or several (one machine with two kinds of card, MIG next to whole GPUs)
    models = list(
        dict.fromkeys(
            (r.get("model"), r.get("memory_mib"))
            for r in gpu.get("resources") or []
            if isinstance(r, Mapping) and r.get("model")
        )
    )
    notes = []
    if len(models) > 1:
        model = " + ".join(
            f"{name} ({mib_text(memory)})" if memory else str(name) for name, memory in models
        )
    else:
        model = gpu.get("model")
        if gpu.get("memory_mib"):
            notes.append(f"{mib_text(gpu['memory_mib'])} each")
    if gpu.get("mig_strategy") not in (None, "none"):
        notes.append(f"MIG {gpu['mig_strategy']}")
    if gpu.get("shared") and gpu.get("replicas", 1) > 1:
        notes.append(f"shared ×{gpu['replicas']} ({gpu.get('sharing_strategy')})")
    physical = gpu.get("physical_count") or 0
    schedulable = _number(capacity.get("gpu"))
    unit = "GPUs" if schedulable == physical else "GPU slots"
    details = [d for d in node.get("gpu_details") or [] if isinstance(d, Mapping)]
    measured = [d for d in details if d.get("utilization") is not None]
    chips = []
    for detail in measured[:GPU_CHIPS_SHOWN]:
        utilisation = _number(detail.get("utilization"))
        memory = ""
        if detail.get("memory_used") is not None and detail.get("memory_total"):
            used, total = (1024**2 * _number(detail[k]) for k in ("memory_used", "memory_total"))
            memory = f", {bytes_pair_text(used, total)} used"
        chips.append(
            {
                "index": detail.get("index"),
                "text": f"{utilisation:.0f}%",
                "title": f"GPU {detail.get('index')}: {utilisation:.0f}% busy{memory}",
                "busy": utilisation >= 50,
            }
        )
    return {
        "bar": _gpu_bar(available.get("gpu"), schedulable, unit),
        "model": model,
        "notes": " · ".join(notes),
        "chips": chips,
        "more_chips": max(0, len(measured) - GPU_CHIPS_SHOWN),
    }


def node_row(node: Mapping[str, Any]) -> dict:
    """What one table row shows of a node document."""
    allocatable, available = node.get("allocatable") or {}, node.get("available") or {}
    taints = [
        f"{t.get('key')}={t['value']}:{t.get('effect')}"
        if t.get("value")
        else f"{t.get('key')}:{t.get('effect')}"
        for t in node.get("taints") or []
        if isinstance(t, Mapping)
    ]
    return {
        "name": node.get("name"),
        "instance_type": node.get("instance_type"),
        "reason": node.get("reason"),
        "taints": taints,
        "cpu": _cpu_bar(available.get("cpu"), allocatable.get("cpu")),
        "memory": _memory_bar(available.get("memory"), allocatable.get("memory")),
        "gpu": _gpu_view(node),
        "pods": f"{count_text(node.get('pod_count'))} of {count_text(node.get('pods_allocatable'))}",
        "pod_count": count_text(node.get("pod_count")),
    }


def _unit(model: Mapping[str, Any]) -> str:
    """What one schedulable unit of a GPU model is called."""
    if model.get("shared"):
        return "slots"
    if str(model.get("resource") or "").startswith("nvidia.com/mig-"):
        return "MIG devices"
    return "GPUs"


def _summary_view(summary: Mapping[str, Any]) -> dict:
    nodes = summary.get("nodes") or {}
    cpu, memory, gpus = (summary.get(key) or {} for key in ("cpu", "memory", "gpus"))
    models = []
    for entry in summary.get("gpu_models") or []:
        largest = entry.get("largest_free_slot")
        where = None
        if largest:
            where = (
                f"{count_text(largest.get('gpus'))} on {largest.get('node')}, with "
                f"{cores_text(largest.get('cpu'))} cores and {bytes_text(largest.get('memory'))}"
            )
        models.append(
            {
                "model": entry.get("model"),
                "memory": mib_text(entry.get("memory_mib")),
                "shared": entry.get("shared"),
                "resource": entry.get("resource"),
                "bar": _gpu_bar(
                    entry.get("free"),
                    entry.get("schedulable"),
                    _unit(entry),
                ),
                "nodes": f"{count_text(entry.get('nodes_with_free'))} of {count_text(entry.get('nodes'))}",
                "largest": where,
            }
        )
    return {
        "nodes": {
            "total": count_text(nodes.get("total")),
            "ready": count_text(nodes.get("ready")),
            "schedulable": count_text(nodes.get("schedulable")),
        },
        "cpu": _cpu_bar(cpu.get("available"), cpu.get("allocatable")),
        "memory": _memory_bar(memory.get("available"), memory.get("allocatable")),
        "gpus": _gpu_bar(
            gpus.get("free"),
            gpus.get("schedulable"),
            "GPUs" if gpus.get("schedulable") == gpus.get("physical") else "GPU slots",
        )
        if _number(gpus.get("schedulable"))
        else None,
        "models": models,
    }


def _price(value: Any) -> str | None:
    number = _number(value) if value is not None else None
    return f"${number:.2f}/h" if number is not None else None


def _cloud_view(cloud: Mapping[str, Any] | None, now: float, link: str) -> dict | None:
    """The cloud offers (cheapest first, as the cache sorts them), or None when cloud is not
    configured on this hub."""
    if not cloud or not cloud.get("configured"):
        return None
    offers = [o for o in cloud.get("offers") or [] if isinstance(o, Mapping)]
    rows = []
    for offer in offers[:OFFERS_SHOWN]:
        count = offer.get("gpu_count") or 1
        name = offer.get("display_name") or offer.get("gpu_type_id")
        rows.append(
            {
                "gpu": name if count == 1 else f"{count}× {name}",
                "vram": f"{offer['vram_gb']} GB" if offer.get("vram_gb") else None,
                "cloud": str(offer.get("cloud_type") or "").title(),
                "price": _price(offer.get("price_per_hour")),
                "spot": _price(offer.get("spot_price_per_hour")),
                "stock": offer.get("stock"),
            }
        )
    fetched = _seconds_since(cloud.get("fetched_at"), now)
    return {
        "rows": rows,
        "more": max(0, len(offers) - OFFERS_SHOWN),
        "link": link,
        "error": cloud.get("error"),
        "fetched_age": fetched,
        "fetched_text": duration_text(fetched) if fetched is not None else None,
    }


def _freshness_view(freshness: Mapping[str, Any], reason: str | None, now: float) -> dict:
    changed = _seconds_since(freshness.get("generated_at"), now)
    stale_for = _number(freshness.get("age_seconds"))
    return {
        "stale": bool(freshness.get("stale")),
        "stale_for": stale_for,
        "stale_text": duration_text(stale_for),
        "reason": reason,
        "changed": changed,
        "changed_text": duration_text(changed) if changed is not None else None,
    }


QUEUE_ROWS = 20  # waiting jobs the page lists (the API lists them all)
MY_JOBS = 20  # the person's own jobs the page lists, newest first


def jobs_view(
    queue_items: list[dict], queued: int, mine: list[dict], prefix: str, now: float
) -> dict:
    """The page's GPU jobs part: the head of the queue (the queue_view shape) and the
    person's own jobs (job_view shapes), with the links to follow and collect them."""
    api = url_path_join(prefix, "api/v1/jobs/")
    rows = []
    for job in mine:
        if job["status"] == "queued":
            where = f"position {job['position']}" if job.get("position") else "queued"
        elif job["status"] == "running":
            where = f"on {job.get('node') or '?'}"
        else:
            code = job.get("exit_code")
            where = (job.get("reason") or job["status"]) + (
                f", exit code {code}" if code is not None else ""
            )
        rows.append(
            {
                "id": job["id"],
                "name": job.get("name") or job.get("script_name") or "",
                "status": job["status"],
                "where": where,
                "gpus": job.get("gpus") or 0,
                "live": job["status"] in ("queued", "running"),
                "logs": api + job["id"] + "/logs",
                "text": api + job["id"] + "/logs?follow=false",
                "result": api + job["id"] + "/result",
            }
        )
    waiting = []
    for item in queue_items[:QUEUE_ROWS]:
        eta = item.get("eta")
        waiting.append(
            {
                "position": item["position"],
                "id": item["id"],
                "user": item["user"],
                "gpus": item["gpus"],
                "gpu_model": item.get("gpu_model"),
                "node": item.get("expected_node"),
                # a time, not a countdown: the page's version changes when the plan does
                "starts_at": eta["start_at"][11:16] + " UTC" if eta else None,
            }
        )
    return {
        "queued": queued,
        "waiting": waiting,
        "more": max(0, queued - len(waiting)),
        "mine": rows,
    }


GPU_STATE_WORDS = {
    "off": "not reclaimed when idle",
    "no-data": "no GPU metrics",
    "active": "in use",
    "kernel-busy": "GPUs idle, a kernel busy",
    "kernels-unknown": "GPUs idle, kernels unknown",
    "warned": "idle: stops unless kept",
    "stop": "idle: stopping",
}


def _utilization_text(value: float | None) -> str:
    return "no metric" if value is None else f"{value:.0f} %"


def gpu_server_view(usage: Mapping[str, Any], prefix: str) -> dict:
    """One of the person's GPU servers as the page shows it (a whole-minute reason, so the
    page's version changes by the minute at most)."""
    decision = usage["decision"]
    latest = usage["history"][-1]["gpus"] if usage["history"] else []
    path = "/".join(quote(part, safe="") for part in (usage["user"], usage["server"]) if part)
    return {
        "name": usage["server"] or "default server",
        "state": decision["state"],
        "state_text": GPU_STATE_WORDS.get(decision["state"], decision["state"]),
        "warned": decision["state"] in ("warned", "stop"),
        "reason": decision["reason"],
        "now": ", ".join(f"{g['gpu']}: {_utilization_text(g['utilization'])}" for g in latest)
        or "no GPU metrics",
        "keep": url_path_join(prefix, "servers", path, "keep"),
        "api": url_path_join(prefix, "api/v1/servers", path, "gpu-usage"),
    }


def page_view(
    *,
    nodes: list[dict],
    summary: Mapping[str, Any],
    freshness: Mapping[str, Any],
    not_ready_reason: str | None,
    cloud: Mapping[str, Any] | None,
    query: PageQuery,
    rows_per_page: int,
    prefix: str,
    hub_home: str,
    refresh_seconds: float,
    user: str | None = None,
    xsrf: str = "",
    etag: str = "",
    now: float | None = None,
    jobs: dict | None = None,
    gpu_servers: list[dict] | None = None,
) -> dict:
    """Everything the template shows, from the published documents (as parsed JSON), the
    freshness fields, the cloud offers' state (None: no cloud part) and the query."""
    now = time.time() if now is None else now
    local = summary.get("local")
    selection = select_nodes(nodes, query, rows_per_page)
    api = url_path_join(prefix, "api/v1/")
    pager = {
        "previous": query.params(page=selection.page - 1) if selection.page > 1 else None,
        "next": query.params(page=selection.page + 1) if selection.page < selection.pages else None,
    }
    links = [
        ("Availability (JSON)", url_path_join(api, "availability")),
        ("Nodes (JSON)", url_path_join(api, "cluster/resources")),
        ("Summary (JSON)", url_path_join(api, "cluster/summary")),
    ]
    cloud_view = _cloud_view(cloud, now, url_path_join(api, "cloud/offers"))
    if cloud_view is not None:
        links.append(("Cloud offers (JSON)", cloud_view["link"]))
    if jobs is not None:
        links.append(("Jobs (JSON)", url_path_join(api, "jobs")))
        links.append(("Queue (JSON)", url_path_join(api, "queue")))
    links.append(("OpenAPI document", url_path_join(api, "openapi.json")))
    links.append(("API docs (browse and try)", url_path_join(api, "docs")))
    return {
        "title": "This machine" if local else "Cluster availability",
        "local": bool(local),
        "hostname": (local or {}).get("hostname") if isinstance(local, Mapping) else None,
        "gpu_status": (local or {}).get("gpu_status") if isinstance(local, Mapping) else None,
        "prefix": prefix if prefix.endswith("/") else prefix + "/",
        "hub_home": hub_home,
        "user": user,
        "xsrf": xsrf,
        "etag": etag,
        "refresh_seconds": refresh_seconds,
        "freshness": _freshness_view(freshness, not_ready_reason, now),
        "summary": _summary_view(summary),
        "query": query,
        "gpu_filters": GPU_FILTERS,
        "sorts": SORTS,
        "filtered": query != PageQuery(page=query.page),
        "selection": selection,
        "rows": [node_row(node) for node in selection.rows],
        "pager": pager,
        "cloud": cloud_view,
        "jobs": jobs,
        "gpu_servers": gpu_servers or [],
        "links": links,
    }


# --- rendering ------------------------------------------------------------------------------


PAGE_CSS = read_template("page.css")
PAGE_JS = read_template("page.js")
CONTENT_SECURITY_POLICY = content_security_policy(PAGE_CSS, PAGE_JS)
_environment = template_environment()
_environment.filters["count"] = count_text
# Changes when the page's look or script does, so a browser holding an older page re-renders.
TEMPLATE_DIGEST = hashlib.blake2b(
    (read_template("page.html") + read_template("error.html") + PAGE_CSS + PAGE_JS).encode(),
    digest_size=8,
).hexdigest()


def _encode(text: str) -> bytes:
    """UTF-8, lone surrogates (which JSON can carry in a name) replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def render_page(view: Mapping[str, Any]) -> bytes:
    template = _environment.get_template("page.html")
    return _encode(template.render(view=view, css=PAGE_CSS, script=PAGE_JS))


def render_error(status: int, message: str, page_url: str, hub_home: str) -> bytes:
    template = _environment.get_template("error.html")
    return _encode(
        template.render(
            status=status, message=message, page_url=page_url, hub_home=hub_home, css=PAGE_CSS
        )
    )


def page_etag(parts: Iterable[Any]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for part in (TEMPLATE_DIGEST, *parts):
        digest.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    return f'"{digest.hexdigest()}"'


# --- the handler ----------------------------------------------------------------------------


class PageHandler(RootHandler):
    """The prefix: the page for a browser (hub login required), the JSON index for anything
    else (public, as before)."""

    # The published documents parsed once per publication, not once per request.
    _parsed: tuple[Published | None, list[dict], dict] = (None, [], {})

    @property
    def wants_html(self) -> bool:
        return "text/html" in self.request.headers.get("Accept", "")

    @property
    def public(self) -> bool:  # type: ignore[override]
        return not self.wants_html

    def _documents(self) -> tuple[list[dict], dict]:
        published = self.service.source.published
        cached, nodes, summary = PageHandler._parsed
        if cached is not published:
            nodes, summary = json.loads(published.resources), json.loads(published.summary)
            PageHandler._parsed = (published, nodes, summary)
        return nodes, summary

    @property
    def hub_home(self) -> str:
        return url_path_join(self.hub_auth.hub_prefix, "home")

    async def get(self) -> None:
        self.set_header("Vary", "Accept")
        if not self.wants_html:
            super().get()
            return
        arguments = {
            name: self.get_query_argument(name, "")
            for name in ("q", "gpu", "sort", "page")
            if name in self.request.query_arguments
        }
        try:
            query = parse_query(arguments)
        except PageQueryError as err:
            self.send_error_page(400, str(err))
            return
        service = self.service
        source = service.source
        fresh = self.freshness()  # also the X-Thinkube-* headers
        cloud = service.cloud.offers.state() if service.cloud else None
        if cloud is not None:
            cloud.pop("age_seconds", None)  # it changes with time; fetched_at says the same
        user = (self.current_user or {}).get("name")
        jobs = await self.jobs_part(user)
        gpu_servers = self.gpu_part(user)
        etag = page_etag(
            [
                gpu_servers,
                json.dumps(jobs, sort_keys=True),
                source.published.content_digest,
                fresh["stale"],
                source.not_ready_reason,
                cloud,
                query.params(),
                user,
                service.page_rows,
                service.page_refresh_seconds,
            ]
        )
        self.set_header("ETag", etag)
        self.set_header("Cache-Control", "no-cache")
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        nodes, summary = self._documents()
        view = page_view(
            nodes=nodes,
            summary=summary,
            freshness=fresh,
            not_ready_reason=source.not_ready_reason,
            cloud=cloud,
            query=query,
            rows_per_page=service.page_rows,
            prefix=service.service_prefix,
            hub_home=self.hub_home,
            refresh_seconds=service.page_refresh_seconds,
            user=user,
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else "",
            etag=etag,
            jobs=jobs,
            gpu_servers=gpu_servers,
        )
        self.send_html(render_page(view))

    def gpu_part(self, user: str | None) -> list[dict]:
        """The person's servers that hold GPUs: utilisation, the decision and its reason,
        and where their Keep button posts."""
        culler = self.service.gpu_idle
        if culler is None or user is None:
            return []
        return [
            gpu_server_view(usage, self.service.service_prefix) for _, usage in culler.of_user(user)
        ]

    async def jobs_part(self, user: str | None) -> dict | None:
        """The queue's head and the person's own jobs (None with jobs off)."""
        queue = self.service.jobs
        if queue is None or user is None:
            return None
        now = time.time()
        order = [queue.active[i] for i in queue.waiting_order()]
        head = order[:QUEUE_ROWS]
        wheres = {e["id"]: queue.where(e) for e in head}
        visible = [e["id"] for e in head if e["user"] == user]
        items = queue_view(head, wheres, visible, now)
        mine, _ = await queue.db(queue.store.search, users=[user], kinds=["job"], limit=MY_JOBS)
        views = [job_view(e, queue.where(e), now) for e in mine]
        for view in views:  # what changes by the second: not part of the page's version
            view.pop("eta", None)
        return jobs_view(items, len(order), views, self.service.service_prefix, now)

    def send_html(self, body: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.finish(body)

    def send_error_page(self, status: int, message: str) -> None:
        self.clear_header("ETag")
        self.send_html(
            render_error(status, message, self.service.service_prefix, self.hub_home), status
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self.wants_html:
            super().write_error(status_code, **kwargs)
            return
        message = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.send_error_page(status_code, message)


def page_route(prefix: str) -> tuple[str, type[PageHandler]]:
    """The page's route: the service's prefix (where the hub's Services menu links)."""
    return (prefix if prefix.endswith("/") else prefix + "/", PageHandler)
