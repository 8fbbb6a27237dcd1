"""The availability service at cluster scale, against kubesim, behind a real JupyterHub.

    python -m benchmarks.resources --nodes 1000 --pods 50000 --json resources.json
    python -m benchmarks.resources --nodes 5000 --pods 150000   # Kubernetes' envelope
    python -m benchmarks.resources --curve                      # 1k, 2k, 5k nodes

``--curve`` runs the whole measurement at 1,000, 2,000 and 5,000 nodes (``--curve-nodes``),
``--pods-per-node`` (30) pods each, one after the other, and prints one JSON object whose
``curve`` holds each run's figures and ``curve_summary`` the headline figures side by side.

Starts kubesim (``python -m tests.kubesim``), a byte-level counting TCP proxy in front of it
(so that the Kubernetes API requests the service makes can be counted), and a real JupyterHub
(``jupyterhub`` CLI, dummy authenticator, configurable-http-proxy) that runs
``python -m hub_service`` as a managed service, exactly as a deployment does; the service
authenticates every request against that hub (cached by HubAuth after the first lookup). The
benchmark's token is the ``api_token`` of a second, URL-less hub service whose role holds
``access:services!service=thinkube-resources`` only.

Figures (all requests go straight to the service's own URL, not through the proxy):

- ``sync_s``: hub start until ``api/v1/ready`` answers 200 (first full list of nodes and pods).
- ``bare_list_s``: kubesim listing all pods to a plain client (aiohttp, pages of
  ``--page-size``, each parsed with json.loads and dropped), measured before the hub starts:
  the floor of any first sync. ``service_sync_share_s`` = ``sync_s`` - ``bare_list_s``, the
  service's own share (and the hub's start-up); ``service_start_to_ready_s``: from the service
  process's start (the hub starts it) until ready, so without the hub's own start-up.
- ``p50_ms``/``p99_ms``: ``GET api/v1/cluster/resources`` with a valid token, ``--clients``
  concurrent clients (16), ``--requests`` requests after a warm-up; time until the whole body
  is read (aiohttp client, in this process). ``server_*_mean_ms``: the service's own mean
  handling time over the same requests (its Prometheus histogram, sum/count delta).
- ``static_p50_ms``/``static_p99_ms``: the floor of the first two: the same clients and
  load against a bare tornado server (a process of its own, no hub, no authentication)
  answering the same bytes from memory.
- ``service_cpu_ms_per_request``/``client_cpu_ms_per_request``: CPU time (user + system) of
  the service process and of this benchmark's own process (the 16 clients) over the
  ``cluster/resources`` load, per request: where the latency goes on a busy machine, where
  the wall-clock figures also carry whatever else runs on it.
- ``summary_p50_ms``/``summary_p99_ms``: the same for ``GET api/v1/cluster/summary``.
- ``availability_p50_ms``/``availability_p99_ms``: the same for ``GET api/v1/availability``
  (the spawner's route: nodes, summary, images and cloud offers in one answer), and
  ``availability_304_p50_ms``/``availability_304_p99_ms`` with ``If-None-Match`` set to the
  answer's ETag, as a spawner revalidating its copy sends it (304, no body).
  ``server_availability_mean_ms``: the service's own mean for the 200s.
- ``freshness_p50_ms``/``freshness_p99_ms``: a pod bound to a node (``spec.nodeName``) is
  created, then deleted (grace period 0), through kubesim's Kubernetes API; each time until
  ``GET api/v1/cluster/resources/{node}`` shows the changed ``pod_count`` (polled every 2 ms).
- ``rss_mb``: resident set size of the service process (psutil) after sync and after the load.
- ``naive_p50_ms``: the request answered as the replaced system did: ``list_node`` and then one
  ``list_pod_for_all_namespaces(field_selector="spec.nodeName=X")`` per node, sequentially,
  with kubernetes_asyncio's typed client (objects deserialised), summing container limits.
  Measured on ``naive_nodes_measured`` nodes and extrapolated to all nodes:
  ``p50(list_node) + nodes * p50(one per-node pod list)``. ``speedup`` = naive_p50_ms / p50_ms.
- ``api_calls_per_request``: Kubernetes API requests the service made during the load phase
  (counted by the proxy: HTTP request lines sent to kubesim) divided by the requests served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import psutil
from kubernetes_asyncio import client, config

from benchmarks.common import (
    bare_list,
    cluster_arguments,
    emit,
    percentile,
    start_kubesim,
    start_static_server,
)
from tests.kubesim.sim import free_port

SERVICE = "thinkube-resources"
ACCESS_SCOPE = f"access:services!service={SERVICE}"
REPO = Path(__file__).resolve().parent.parent
REQUEST_LINE = re.compile(
    rb"(?:^|\r\n)(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) \S+ HTTP/1\.[01]\r\n"
)


class CountingProxy:
    """Forwards TCP to kubesim and counts the HTTP request lines sent to it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst, count: bool) -> None:
            buffer = b""
            try:
                while chunk := await src.read(65536):
                    if count:
                        # count complete request lines; keep the bytes after the last one
                        # (at most 4 KiB) so that a line split across reads is still seen
                        buffer += chunk
                        end = 0
                        for match in REQUEST_LINE.finditer(buffer):
                            self.requests += 1
                            end = match.end()
                        buffer = buffer[max(end, len(buffer) - 4096) :]
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = [
            asyncio.ensure_future(pipe(reader, up_writer, True)),
            asyncio.ensure_future(pipe(up_reader, writer, False)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


def hub_config(workdir: Path, kubeconfig: Path, service_port: int, hub_port: int, token: str):
    command = [
        sys.executable,
        "-m",
        "hub_service",
        "--kubeconfig",
        str(kubeconfig),
        "--db-url",
        f"sqlite:///{workdir / 'catalog.sqlite'}",
        "--log-file",
        str(workdir / "service.log"),
    ]
    return f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{hub_port}/"
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.JupyterHub.db_url = "sqlite:///{workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = "{workdir / "jupyterhub_cookie_secret"}"
c.ConfigurableHTTPProxy.pid_file = "{workdir / "jupyterhub-proxy.pid"}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [
    {{
        "name": "{SERVICE}",
        "url": "http://127.0.0.1:{service_port}",
        "command": {command!r},
        "cwd": "{REPO}",
        "display": False,
        "oauth_no_confirm": True,
    }},
    {{"name": "benchmark", "api_token": "{token}"}},
]
c.JupyterHub.custom_scopes = {{
    "custom:thinkube:images:write": {{"description": "Write the thinkube image catalog."}}
}}
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "{ACCESS_SCOPE}"]}},
    {{"name": "benchmark-reader", "scopes": ["{ACCESS_SCOPE}"], "services": ["benchmark"]}},
]
"""


def service_process(hub: psutil.Process) -> psutil.Process | None:
    for child in hub.children(recursive=True):
        try:
            if "hub_service" in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


async def static_floor(body: bytes, workdir: Path, args) -> dict:
    """The same load on a bare tornado server answering the same bytes from memory."""
    path = workdir / "static.json"
    path.write_bytes(body)
    port = free_port()
    server = await start_static_server(path, port)
    try:
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}/",
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=args.clients + 4),
        ) as http:
            await load(http, "/", args.clients, args.warmup)
            latencies = await load(http, "/", args.clients, args.requests)
    finally:
        server.terminate()
        await server.wait()
    return {
        "static_p50_ms": round(statistics.median(latencies), 2),
        "static_p99_ms": round(percentile(latencies, 0.99), 2),
    }


def cpu_seconds(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    times = process.cpu_times()
    return times.user + times.system


async def get(
    http: aiohttp.ClientSession, path: str, headers: dict | None = None
) -> tuple[int, bytes]:
    async with http.get(path, headers=headers) as response:
        return response.status, await response.read()


def server_seconds(metrics: str, handler: str) -> tuple[float, float]:
    """(sum, count) of the service's request-duration histogram for `handler`, code 200."""
    values = {}
    for kind in ("sum", "count"):
        pattern = (
            rf'^thinkube_request_duration_seconds_{kind}\{{(?=[^}}]*handler="{handler}")'
            rf'(?=[^}}]*code="200")[^}}]*\}} (\S+)$'
        )
        match = re.search(pattern, metrics, re.MULTILINE)
        values[kind] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


async def load(
    http: aiohttp.ClientSession,
    path: str,
    clients: int,
    total: int,
    headers: dict | None = None,
    expect: int = 200,
) -> list[float]:
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            status, body = await get(http, path, headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != expect:
                raise RuntimeError(f"{path}: {status} {body[:200]!r}")

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


async def freshness(core, http: aiohttp.ClientSession, node: str, samples: int) -> list[float]:
    path = f"api/v1/cluster/resources/{node}"

    async def pod_count() -> int:
        status, body = await get(http, path)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:200]!r}")
        return json.loads(body)["pod_count"]

    results = []
    for i in range(samples // 2 + samples % 2):
        name = f"freshness-{i}"
        for action in ("create", "delete"):
            if len(results) >= samples:
                break
            before = await pod_count()
            started = time.perf_counter()
            if action == "create":
                body = {
                    "metadata": {"name": name},
                    "spec": {
                        "nodeName": node,
                        "containers": [
                            {
                                "name": "c",
                                "image": "busybox",
                                "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
                            }
                        ],
                    },
                }
                await core.create_namespaced_pod("default", body)
                expected = before + 1
            else:
                await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
                expected = before - 1
            deadline = started + 10
            while await pod_count() != expected:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{action} {name} not visible after 10 s")
                await asyncio.sleep(0.002)
            results.append((time.perf_counter() - started) * 1000)
    return results


_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def old_parse(value: str) -> Decimal:
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if value.endswith(suffix):
            return Decimal(value[: -len(suffix)]) * _SUFFIX[suffix]
    return Decimal(value)


async def naive(core, sample: int, repeat: int) -> dict:
    """The replaced system: list nodes, then one typed pod list per node, summing limits."""
    list_times = []
    for _ in range(repeat):
        started = time.perf_counter()
        nodes = await core.list_node()
        list_times.append(time.perf_counter() - started)
    names = [node.metadata.name for node in nodes.items]
    step = max(1, len(names) // sample)
    measured = names[::step][:sample]
    per_node = []
    for name in measured:
        started = time.perf_counter()
        pods = await core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}")
        cpu = memory = Decimal(0)
        for pod in pods.items:
            for container in pod.spec.containers:
                limits = (container.resources and container.resources.limits) or {}
                cpu += old_parse(limits.get("cpu", "0"))
                memory += old_parse(limits.get("memory", "0"))
        per_node.append(time.perf_counter() - started)
    list_p50 = statistics.median(list_times) * 1000
    node_p50 = statistics.median(per_node) * 1000
    return {
        "naive_p50_ms": round(list_p50 + node_p50 * len(names), 1),
        "naive_list_nodes_ms": round(list_p50, 1),
        "naive_per_node_pod_list_p50_ms": round(node_p50, 1),
        "naive_nodes_measured": len(measured),
    }


async def measure(args, workdir: Path) -> dict:
    figures: dict = {"nodes": args.nodes, "pods": args.pods}
    kubeconfig = workdir / "kubeconfig"
    kubesim = await start_kubesim(args.nodes, args.gpu_nodes, args.pods, kubeconfig)
    kube_port = kubesim.port
    figures["kubesim_startup_s"] = round(kubesim.startup_s, 1)
    proxy = CountingProxy(kube_port)
    hub = None
    try:
        figures.update(await bare_list(kubesim.url, "pods", args.page_size))
        await proxy.start()
        proxied = workdir / "kubeconfig-proxied"
        proxied.write_text(
            kubeconfig.read_text().replace(f"127.0.0.1:{kube_port}", f"127.0.0.1:{proxy.port}")
        )
        token = secrets.token_hex(32)
        service_port = free_port()
        hub_port = free_port()
        (workdir / "jupyterhub_config.py").write_text(
            hub_config(workdir, proxied, service_port, hub_port, token)
        )
        env = dict(os.environ)
        env["PATH"] = f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}"
        jupyterhub = shutil.which("jupyterhub", path=env["PATH"]) or str(
            Path(sys.executable).parent / "jupyterhub"
        )
        hub_log = os.open(workdir / "hub.log", os.O_WRONLY | os.O_CREAT, 0o600)
        started = time.perf_counter()
        hub = await asyncio.create_subprocess_exec(
            jupyterhub,
            "-f",
            str(workdir / "jupyterhub_config.py"),
            cwd=str(workdir),
            env=env,
            stdout=hub_log,
            stderr=asyncio.subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{service_port}/services/{SERVICE}/"
        async with aiohttp.ClientSession(
            base_url=base,
            headers={"Authorization": f"token {token}"},
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=args.clients + 4),
        ) as http:
            deadline = time.perf_counter() + args.sync_timeout
            while True:
                if hub.returncode is not None:
                    raise RuntimeError(
                        f"jupyterhub exited: {(workdir / 'hub.log').read_text()[-2000:]}"
                    )
                try:
                    status, _ = await get(http, "api/v1/ready")
                    if status == 200:
                        break
                except aiohttp.ClientError:
                    pass
                if time.perf_counter() > deadline:
                    raise RuntimeError(
                        "service not ready: " + (workdir / "service.log").read_text()[-2000:]
                        if (workdir / "service.log").exists()
                        else "no service log"
                    )
                await asyncio.sleep(0.2)
            figures["sync_s"] = round(time.perf_counter() - started, 2)
            ready_at = time.time()
            figures["service_sync_share_s"] = round(figures["sync_s"] - figures["bare_list_s"], 2)
            service = service_process(psutil.Process(hub.pid))
            if service is not None:
                figures["service_start_to_ready_s"] = round(ready_at - service.create_time(), 2)
            figures["rss_mb_after_sync"] = (
                round(service.memory_info().rss / 2**20, 1) if service else None
            )

            status, body = await get(http, "api/v1/cluster/resources")
            document = json.loads(body)
            nodes_doc = document["nodes"] if isinstance(document, dict) else document
            figures["nodes_in_response"] = len(nodes_doc)
            figures["response_bytes"] = len(body)
            figures.update(await static_floor(body, workdir, args))

            await load(http, "api/v1/cluster/resources", args.clients, args.warmup)
            await load(http, "api/v1/cluster/summary", args.clients, args.warmup)
            calls_before = proxy.requests
            metrics_before = (await get(http, "metrics"))[1].decode()
            cpu_before = (cpu_seconds(service), cpu_seconds(psutil.Process()))
            latencies = await load(http, "api/v1/cluster/resources", args.clients, args.requests)
            cpu_after = (cpu_seconds(service), cpu_seconds(psutil.Process()))
            for key, before, after in zip(
                ("service_cpu_ms_per_request", "client_cpu_ms_per_request"),
                cpu_before,
                cpu_after,
                strict=True,
            ):
                figures[key] = (
                    round((after - before) / args.requests * 1000, 2)
                    if before is not None and after is not None
                    else None
                )
            summary = await load(http, "api/v1/cluster/summary", args.clients, args.requests)
            availability = await load(http, "api/v1/availability", args.clients, args.requests)
            async with http.get("api/v1/availability") as response:
                etag = response.headers["ETag"]
                figures["availability_bytes"] = len(await response.read())
            not_modified = await load(
                http,
                "api/v1/availability",
                args.clients,
                args.requests,
                headers={"If-None-Match": etag},
                expect=304,
            )
            metrics_after = (await get(http, "metrics"))[1].decode()
            kube_calls = proxy.requests - calls_before
            for key, handler in (
                ("server_mean_ms", "ResourcesHandler"),
                ("server_summary_mean_ms", "SummaryHandler"),
                ("server_availability_mean_ms", "AvailabilityHandler"),
            ):
                s0, c0 = server_seconds(metrics_before, handler)
                s1, c1 = server_seconds(metrics_after, handler)
                figures[key] = round((s1 - s0) / (c1 - c0) * 1000, 2) if c1 > c0 else None
            served = 4 * args.requests
            figures["p50_ms"] = round(statistics.median(latencies), 2)
            figures["p99_ms"] = round(percentile(latencies, 0.99), 2)
            figures["summary_p50_ms"] = round(statistics.median(summary), 2)
            figures["summary_p99_ms"] = round(percentile(summary, 0.99), 2)
            figures["availability_p50_ms"] = round(statistics.median(availability), 2)
            figures["availability_p99_ms"] = round(percentile(availability, 0.99), 2)
            figures["availability_304_p50_ms"] = round(statistics.median(not_modified), 2)
            figures["availability_304_p99_ms"] = round(percentile(not_modified, 0.99), 2)
            figures["requests_measured"] = len(latencies)
            figures["clients"] = args.clients
            figures["kube_api_calls_during_load"] = kube_calls
            figures["api_calls_per_request"] = round(kube_calls / served, 4)

            configuration = client.Configuration()
            await config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration
            )
            async with client.ApiClient(configuration) as api:
                core = client.CoreV1Api(api)
                node = next(
                    n["name"]
                    for n in nodes_doc
                    if n.get("schedulable") and n["available"]["cpu"] > 0.1
                )
                fresh = await freshness(core, http, node, args.freshness_samples)
                figures["freshness_p50_ms"] = round(statistics.median(fresh), 1)
                figures["freshness_p99_ms"] = round(percentile(fresh, 0.99), 1)
                figures["freshness_max_ms"] = round(max(fresh), 1)
                figures["freshness_samples"] = len(fresh)
                figures["rss_mb"] = round(service.memory_info().rss / 2**20, 1) if service else None
                figures.update(await naive(core, args.naive_nodes, args.naive_repeat))
            figures["speedup"] = round(figures["naive_p50_ms"] / figures["p50_ms"], 1)
    finally:
        if hub is not None and hub.returncode is None:
            # the hub stops its managed service and the proxy on SIGTERM
            hub.terminate()
            try:
                await asyncio.wait_for(hub.wait(), 20)
            except TimeoutError:
                for child in psutil.Process(hub.pid).children(recursive=True):
                    child.kill()
                hub.kill()
                await hub.wait()
        await proxy.stop()
        await kubesim.stop()
    figures["targets"] = {
        "p99_ms": 50,
        "freshness_p99_ms": 1000,
        # 400 MB up to the 1,000-node cluster; 1 GB at Kubernetes' envelope (5,000 nodes)
        "rss_mb": 400 if args.nodes <= 1000 else 1000,
        "speedup": 100,
        "service_sync_share_s": 20,
    }
    return figures


CURVE_FIELDS = (
    "nodes",
    "pods",
    "response_bytes",
    "p50_ms",
    "p99_ms",
    "static_p99_ms",
    "server_mean_ms",
    "service_cpu_ms_per_request",
    "client_cpu_ms_per_request",
    "availability_p99_ms",
    "availability_304_p99_ms",
    "summary_p99_ms",
    "freshness_p99_ms",
    "rss_mb",
    "sync_s",
    "bare_list_s",
    "service_sync_share_s",
    "service_start_to_ready_s",
    "speedup",
)


async def curve(args) -> dict:
    """The whole measurement at each size of ``--curve-nodes``, one after the other."""
    runs = []
    for nodes in args.curve_nodes:
        sized = argparse.Namespace(**vars(args))
        sized.nodes, sized.pods = nodes, nodes * args.pods_per_node
        with tempfile.TemporaryDirectory(prefix="thinkube-bench-") as tmp:
            runs.append(await measure(sized, Path(tmp)))
    return {
        "curve_summary": [{key: run.get(key) for key in CURVE_FIELDS} for run in runs],
        "curve": runs,
    }


def main() -> None:
    parser = cluster_arguments(__doc__)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per route")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--freshness-samples", type=int, default=30)
    parser.add_argument("--naive-nodes", type=int, default=50, help="nodes the naive side lists")
    parser.add_argument("--naive-repeat", type=int, default=3, help="list_node calls timed")
    parser.add_argument("--sync-timeout", type=float, default=180)
    parser.add_argument(
        "--page-size", type=int, default=500, help="pages of the bare list (the service's)"
    )
    parser.add_argument(
        "--curve", action="store_true", help="run at each of --curve-nodes, not at --nodes"
    )
    parser.add_argument(
        "--curve-nodes", type=int, nargs="+", default=[1000, 2000, 5000], metavar="NODES"
    )
    parser.add_argument("--pods-per-node", type=int, default=30, help="pods per node (--curve)")
    args = parser.parse_args()
    if args.curve:
        figures = asyncio.run(curve(args))
    else:
        with tempfile.TemporaryDirectory(prefix="thinkube-bench-") as tmp:
            figures = asyncio.run(measure(args, Path(tmp)))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
