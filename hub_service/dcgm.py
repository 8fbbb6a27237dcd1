"""Live GPU metrics from NVIDIA DCGM exporter endpoints, without exec into any pod.

The DCGM exporter serves Prometheus text on ``:9400/metrics``. Only three gauges are used:
``DCGM_FI_DEV_GPU_UTIL`` (%), ``DCGM_FI_DEV_FB_USED`` and ``DCGM_FI_DEV_FB_FREE`` (MiB),
with the labels ``gpu`` (index), ``UUID``, ``modelName``, ``Hostname`` (``hostname`` in newer
builds: both are accepted) and, when the exporter runs with ``--kubernetes``, ``pod`` /
``namespace`` / ``container`` (``pod_name`` / ``pod_namespace`` / ``container_name`` with
``--use-old-namespace``).

Shapes, as returned by :func:`parse_dcgm` and passed to ``on_update``::

    {hostname: {gpu_index: {
        "utilization": float | None,        # percent
        "memory_used_mib": float | None,
        "memory_free_mib": float | None,
        "memory_total_mib": float | None,   # used + free (FB_RESERVED is not counted)
        "uuid": str, "model": str,
        "pods": [{"namespace": str, "pod": str, "container": str}],  # [] when none
    }}}

A value is ``None`` when the exporter does not report it (e.g. no framebuffer fields on
unified-memory GPUs such as GB10). Several samples may describe one GPU: with
``--kubernetes-virtual-gpus`` each sharing pod gets its own copy of the same values, and MIG
instances (label ``GPU_I_ID``) report their own memory. A whole-GPU sample wins; otherwise
instance samples are summed (memory) or averaged (utilization).

The exporter's ``Hostname`` is the ``NODE_NAME`` environment variable when set (the Helm
chart and GPU operator set it from ``spec.nodeName``), else the container's hostname; see
:func:`metrics_for_node`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .background import cancel_and_wait

__all__ = [
    "DcgmMetrics",
    "DcgmScraper",
    "metrics_for_node",
    "parse_dcgm",
    "parse_dcgm_counted",
    "parse_dcgm_with_pods",
]

GpuMetrics = dict[str, Any]
DcgmMetrics = dict[str, dict[int, GpuMetrics]]

FIELD_BY_METRIC = {
    "DCGM_FI_DEV_GPU_UTIL": "utilization",
    "DCGM_FI_DEV_FB_USED": "memory_used_mib",
    "DCGM_FI_DEV_FB_FREE": "memory_free_mib",
    # 0..1; on MIG the only utilisation a GPU instance has (profiling metrics, DCGM >= 2.1)
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "engine_active",
}
# DCGM marks missing values with sentinels: int64 blanks start at 0x7ffffffffffffff0 and the
# float64 blank is 2**47. No utilization or MiB value comes near either.
_DCGM_BLANK_FROM = float(2**47)
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_WHOLE_GPU = ""  # GPU_I_ID of a sample that describes the whole GPU, not a MIG instance
_POD_LABELS = {
    "pod": ("pod", "pod_name"),
    "namespace": ("namespace", "pod_namespace"),
    "container": ("container", "container_name"),
}


@dataclass
class _GpuSamples:
    uuid: str = ""
    model: str = ""
    # field name -> {GPU instance id ("" for the whole GPU): value}
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    pods: list[dict[str, str]] = field(default_factory=list)
    # (namespace, pod) -> GPU instance id -> field -> value: what each pod's own samples say
    pod_values: dict[tuple[str, str], dict[str, dict[str, float]]] = field(default_factory=dict)

    def add(self, metric_field: str, labels: dict[str, str], value: float) -> None:
        self.uuid = self.uuid or labels.get("UUID", "")
        self.model = self.model or labels.get("modelName", "")
        instance = labels.get("GPU_I_ID", _WHOLE_GPU)
        self.values.setdefault(metric_field, {})[instance] = value
        pod = {key: _first_label(labels, names) for key, names in _POD_LABELS.items()}
        if pod["pod"] and pod not in self.pods:
            self.pods.append(pod)
        if pod["pod"]:
            by_instance = self.pod_values.setdefault((pod["namespace"], pod["pod"]), {})
            by_instance.setdefault(instance, {})[metric_field] = value

    def pod_usage(self, hostname: str, gpu_index: int) -> dict[tuple[str, str], list[dict]]:
        """Each pod's utilisation of this GPU (of its MIG instance on MIG), in percent:
        DCGM_FI_DEV_GPU_UTIL of a whole GPU, else 100 x DCGM_FI_PROF_GR_ENGINE_ACTIVE;
        None when its samples carry neither."""
        usage: dict[tuple[str, str], list[dict]] = {}
        for pod, by_instance in self.pod_values.items():
            for instance, fields in sorted(by_instance.items()):
                utilization = fields.get("utilization") if instance == _WHOLE_GPU else None
                if utilization is None and "engine_active" in fields:
                    utilization = round(100.0 * min(1.0, fields["engine_active"]), 2)
                usage.setdefault(pod, []).append(
                    {
                        "key": (self.uuid or f"{hostname}/{gpu_index}")
                        + (f"/{instance}" if instance else ""),
                        "hostname": hostname,
                        "gpu": gpu_index,
                        "instance": instance,
                        "model": self.model,
                        "utilization": utilization,
                    }
                )
        return usage

    def _combined(self, metric_field: str, *, average: bool) -> float | None:
        by_instance = self.values.get(metric_field)
        if not by_instance:
            return None
        if _WHOLE_GPU in by_instance:
            return by_instance[_WHOLE_GPU]
        total = sum(by_instance.values())
        return total / len(by_instance) if average else total

    def result(self) -> GpuMetrics:
        used = self._combined("memory_used_mib", average=False)
        free = self._combined("memory_free_mib", average=False)
        return {
            "utilization": self._combined("utilization", average=True),
            "memory_used_mib": used,
            "memory_free_mib": free,
            "memory_total_mib": used + free if used is not None and free is not None else None,
            "uuid": self.uuid,
            "model": self.model,
            "pods": self.pods,
        }


def _first_label(labels: dict[str, str], names: tuple[str, ...]) -> str:
    return next((labels[name] for name in names if labels.get(name)), "")


def _parse_sample(line: str) -> tuple[dict[str, str], float] | None:
    """Labels and value of one exposition line, or None if it is not a valid sample."""
    try:
        families = list(text_string_to_metric_families(line))
        sample = families[0].samples[0]
        return dict(sample.labels), float(sample.value)
    except Exception:  # the parser raises ValueError, but any failure just means "bad line"
        return None


PodUsage = dict[tuple[str, str], list[dict]]


def parse_dcgm_counted(text: str) -> tuple[DcgmMetrics, int]:
    """Parse DCGM exporter output; also return how many samples were skipped.

    Skipped: lines of the three used metrics that could not be parsed or carry no usable
    value (not a number, NaN/inf, negative, a DCGM blank sentinel) or no usable ``gpu`` /
    hostname label. Lines of other metrics, comments and blank lines are ignored, not counted.
    Each line is parsed on its own, so one bad line never hides the rest.
    """
    metrics, skipped, _ = parse_dcgm_with_pods(text)
    return metrics, skipped


def parse_dcgm_with_pods(text: str) -> tuple[DcgmMetrics, int, PodUsage]:
    """:func:`parse_dcgm_counted`, and each pod's GPUs with their utilisation (exporters
    run with Kubernetes mapping label a GPU's, or a MIG instance's, samples with the pod
    using it): ``{(namespace, pod): [{"key", "hostname", "gpu", "instance", "model",
    "utilization"}]}``."""
    gpus: dict[tuple[str, int], _GpuSamples] = {}
    skipped = 0
    for raw_line in text.splitlines():
        line = raw_line.strip()
        name = _METRIC_NAME.match(line)
        metric_field = FIELD_BY_METRIC.get(name.group()) if name else None
        if metric_field is None:
            continue
        parsed = _parse_sample(line)
        if parsed is None:
            skipped += 1
            continue
        labels, value = parsed
        gpu_index = labels.get("gpu", "")
        hostname = labels.get("Hostname") or labels.get("hostname")
        usable_value = math.isfinite(value) and 0 <= value < _DCGM_BLANK_FROM
        if not (usable_value and hostname and gpu_index.isascii() and gpu_index.isdigit()):
            skipped += 1
            continue
        gpus.setdefault((hostname, int(gpu_index)), _GpuSamples()).add(metric_field, labels, value)

    metrics: DcgmMetrics = {}
    pods: PodUsage = {}
    for (hostname, gpu_index), samples in sorted(gpus.items()):
        metrics.setdefault(hostname, {})[gpu_index] = samples.result()
        for pod, entries in samples.pod_usage(hostname, gpu_index).items():
            pods.setdefault(pod, []).extend(entries)
    return metrics, skipped, pods


def parse_dcgm(text: str) -> DcgmMetrics:
    """``{hostname: {gpu_index: {...}}}`` from DCGM exporter output; never raises.

    Unusable lines are skipped; :func:`parse_dcgm_counted` also returns their count.
    """
    return parse_dcgm_counted(text)[0]


def metrics_for_node(merged: DcgmMetrics, node_name: str) -> dict[int, GpuMetrics] | None:
    """The GPUs of a Kubernetes node in merged DCGM metrics, or None if it is not there.

    DCGM reports the node's hostname, which normally is the node name. Matched in order:
    exactly; ignoring case; then a bare host name against the first label of a fully
    qualified one (``gpu-1`` with ``gpu-1.example.internal``), only if that match is unique.
    An exporter without ``NODE_NAME`` that is not on the host network reports its pod name,
    which cannot be matched.
    """
    if node_name in merged:
        return merged[node_name]
    wanted = node_name.lower()
    for hostname, gpus in merged.items():
        if hostname.lower() == wanted:
            return gpus
    candidates = [
        gpus for hostname, gpus in merged.items() if _bare_name_matches(hostname.lower(), wanted)
    ]
    return candidates[0] if len(candidates) == 1 else None


def _bare_name_matches(a: str, b: str) -> bool:
    return ("." not in a and a == b.split(".", 1)[0]) or ("." not in b and b == a.split(".", 1)[0])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _ScrapeFailed(Exception):
    """One endpoint could not be scraped; the message is a short plain reason."""


def _connect_failure(exc: httpx.ConnectError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return f"cannot connect: {exc}" if str(exc) else "cannot connect"


@dataclass
class _Endpoint:
    url: str
    status: str = "pending"  # pending (no scrape finished yet) | ok | unreachable
    last_scrape: str | None = None  # iso8601 of the last successful scrape
    since: str | None = None  # iso8601 of the first failure of the current streak
    error: str | None = None
    metrics: DcgmMetrics = field(default_factory=dict)
    pods: PodUsage = field(default_factory=dict)
    metrics_at: float | None = None  # time.monotonic() of the last good data

    def details(self) -> dict[str, Any]:
        if self.status == "ok":
            return {"status": "ok", "last_scrape": self.last_scrape}
        if self.status == "unreachable":
            details = {"status": "unreachable", "since": self.since, "error": self.error}
            if self.last_scrape:
                details["last_scrape"] = self.last_scrape
            return details
        return {"status": self.status}


OnUpdate = Callable[[DcgmMetrics], Any]


class DcgmScraper:
    """Scrape DCGM exporter endpoints concurrently every ``interval_s`` seconds.

    After each round ``on_update`` (sync or async) is called with the metrics of all
    endpoints merged by hostname (see :attr:`metrics`). An endpoint that fails keeps its last
    good data for ``stale_after_s`` seconds after its last success, then its data is dropped.
    State changes of an endpoint are logged once each (warning when it becomes unreachable,
    info when it is ok again), never once per scrape. Nothing raises out of the loop.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        interval_s: float = 15.0,
        timeout_s: float = 5.0,
        log: logging.Logger | None = None,
        on_update: OnUpdate | None = None,
        stale_after_s: float = 60.0,
    ) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.log = log or logging.getLogger(__name__)
        self.on_update = on_update
        self.metrics: DcgmMetrics = {}
        # (namespace, pod) -> the GPUs its samples name, with utilisation (see
        # parse_dcgm_with_pods); empty without the exporters' Kubernetes mapping
        self.pod_usage: PodUsage = {}
        self._endpoints = [_Endpoint(url) for url in dict.fromkeys(endpoints)]
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task | None = None
        self._on_update_failing = False

    def start(self) -> None:
        """Start the scrape loop in the running event loop (no-op without endpoints)."""
        if self._endpoints and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="dcgm-scraper")

    async def stop(self) -> None:
        """Cancel the scrape loop and close the HTTP client."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.scrape_once()
            except Exception:  # scrape_once handles its own errors; this is a last guard
                self.log.exception("DCGM scrape round failed")
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def scrape_once(self) -> DcgmMetrics:
        """Scrape every endpoint once, concurrently; update state, call on_update."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        await asyncio.gather(*(self._scrape(endpoint) for endpoint in self._endpoints))
        self.metrics = self._merge()
        if self.on_update is not None:
            await self._notify(self.metrics)
        return self.metrics

    async def _scrape(self, endpoint: _Endpoint) -> None:
        try:
            metrics, pods = await self._fetch(endpoint.url)
        except _ScrapeFailed as failure:
            self._mark_unreachable(endpoint, str(failure))
        except Exception as exc:  # never let one endpoint break the round
            self._mark_unreachable(endpoint, f"{type(exc).__name__}: {exc}"[:200])
        else:
            if endpoint.status != "ok":
                gpu_count = sum(len(gpus) for gpus in metrics.values())
                if endpoint.status == "unreachable":
                    self.log.info("DCGM endpoint %s is reachable again", endpoint.url)
                else:
                    self.log.info("DCGM endpoint %s ok: %d GPUs", endpoint.url, gpu_count)
            endpoint.status, endpoint.since, endpoint.error = "ok", None, None
            endpoint.last_scrape = _now_iso()
            endpoint.metrics, endpoint.metrics_at = metrics, time.monotonic()
            endpoint.pods = pods

    async def _fetch(self, url: str) -> tuple[DcgmMetrics, PodUsage]:
        assert self._client is not None
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.get(url)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _ScrapeFailed(f"timed out after {self.timeout_s:g}s") from exc
        except httpx.ConnectError as exc:
            raise _ScrapeFailed(_connect_failure(exc)) from exc
        except httpx.HTTPError as exc:
            raise _ScrapeFailed(f"{type(exc).__name__}: {exc}"[:200]) from exc
        if response.status_code != 200:
            raise _ScrapeFailed(f"HTTP {response.status_code}")
        metrics, skipped, pods = parse_dcgm_with_pods(response.text)
        if not metrics:
            raise _ScrapeFailed(f"no DCGM GPU metrics in response ({skipped} bad samples)")
        if skipped:
            self.log.debug("DCGM endpoint %s: skipped %d bad samples", url, skipped)
        return metrics, pods

    def _mark_unreachable(self, endpoint: _Endpoint, reason: str) -> None:
        if endpoint.status != "unreachable":
            self.log.warning("DCGM endpoint %s unreachable: %s", endpoint.url, reason)
            endpoint.status, endpoint.since = "unreachable", _now_iso()
        else:
            self.log.debug("DCGM endpoint %s still unreachable: %s", endpoint.url, reason)
        endpoint.error = reason

    def _merge(self) -> DcgmMetrics:
        merged: DcgmMetrics = {}
        pods: PodUsage = {}
        now = time.monotonic()
        for endpoint in self._endpoints:
            if endpoint.metrics_at is not None and now - endpoint.metrics_at > self.stale_after_s:
                self.log.info(
                    "DCGM endpoint %s: dropping data last scraped %s",
                    endpoint.url,
                    endpoint.last_scrape,
                )
                endpoint.metrics, endpoint.metrics_at, endpoint.pods = {}, None, {}
            for hostname, gpus in endpoint.metrics.items():
                merged.setdefault(hostname, {}).update(gpus)
            for pod, entries in endpoint.pods.items():
                pods.setdefault(pod, []).extend(entries)
        self.pod_usage = pods
        return merged

    async def _notify(self, metrics: DcgmMetrics) -> None:
        assert self.on_update is not None
        try:
            result = self.on_update(metrics)
            if inspect.isawaitable(result):
                await result
        except Exception:
            if not self._on_update_failing:
                self.log.exception("DCGM on_update callback failed")
            self._on_update_failing = True
        else:
            self._on_update_failing = False

    def fresh_pod_usage(self) -> PodUsage:
        """:attr:`pod_usage` of the endpoints whose last scrape succeeded only: what decides
        whether a GPU is idle never comes from an exporter that stopped answering."""
        pods: PodUsage = {}
        for endpoint in self._endpoints:
            if endpoint.status == "ok":
                for pod, entries in endpoint.pods.items():
                    pods.setdefault(pod, []).extend(entries)
        return pods

    def metrics_status(self) -> dict[str, Any]:
        """Overall state: off | pending | ok | partial | unreachable (with ``since``).

        ``pending`` until every endpoint finished its first scrape. ``since`` of an
        unreachable whole is when its last endpoint went down. ``endpoints`` maps each URL to
        ``{"status": "ok", "last_scrape"}`` or ``{"status": "unreachable", "since", "error"}``
        (plus ``last_scrape`` if it ever succeeded).
        """
        if not self._endpoints:
            return {"status": "off"}
        statuses = {endpoint.status for endpoint in self._endpoints}
        status: dict[str, Any] = {}
        if "pending" in statuses:
            status["status"] = "pending"
        elif statuses == {"ok"}:
            status["status"] = "ok"
        elif statuses == {"unreachable"}:
            status["status"] = "unreachable"
            status["since"] = max(endpoint.since or "" for endpoint in self._endpoints)
        else:
            status["status"] = "partial"
        status["endpoints"] = {endpoint.url: endpoint.details() for endpoint in self._endpoints}
        return status
