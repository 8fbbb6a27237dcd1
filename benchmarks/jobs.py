"""The GPU job queue at scale: the service as a real process under a real JupyterHub.

    python -m benchmarks.jobs --json jobs.json       # 10,000 queued over 1,000 nodes
    python -m benchmarks.jobs --quick                # the same, scaled down (~2 minutes)

Each part starts kubesim (``python -m tests.kubesim``, a process of its own) and a real
JupyterHub (``jupyterhub`` CLI, configurable-http-proxy) running ``python -m hub_service`` as
a managed service, as a deployment does. ``--users`` hub users each hold a token
(``JupyterHub.api_tokens``) whose role grants access to the service; a second, URL-less hub
service's token also holds ``custom:thinkube:jobs:admin`` (declared in ``custom_scopes``):
it counts and cancels everyone's jobs. All requests go straight to the service's own URL.

**queue** (``--nodes`` nodes, ``--gpu-nodes`` of them with GPUs, ``--pods`` background pods;
kubesim without its process runtime, so job pods stay Running, as pods of long jobs do):

- ``rss_mb_idle``: the service's resident memory once ready, before any job.
- ``gpus``/``running``: every GPU filled first with a 1-GPU job (as many jobs as the nodes
  have GPUs, ``GET api/v1/nodes``); ``rss_mb_before``: the service's memory then.
- ``fill_*``: ``POST api/v1/jobs`` (1 GPU, JSON) for ``--queued`` minus ``--submit-samples``
  more jobs from ``--users`` users in turn, ``--clients`` at a time; none can start, so each
  one queues. ``fill_per_s`` submissions a second, ``fill_p50_ms``/``fill_p99_ms`` each one's
  latency with ``--clients`` waiting at once (on a machine they saturate, the queueing
  behind each other). ``service_cpu_ms_per_submit``: the service's CPU time (user + system)
  over those, per submission: where the time goes on a busy machine, where the wall-clock
  figures also carry whatever else runs on it.
- ``submit_p50_ms``/``submit_p99_ms``: then the last ``--submit-samples`` submissions, one at
  a time, with the queue near ``--queued``: what a person sees. Beside each,
  ``ready_p50_ms``/``ready_p99_ms``: ``GET api/v1/ready`` with the same token, the floor of
  an authenticated request to the service. ``rss_mb_after``/``rss_growth_mb``: the
  service's memory after all of them.
- ``queue_p50_ms``/``queue_p99_ms``: ``GET api/v1/queue`` with them all queued, as a user
  (ids of its own jobs only) and as the admin (``queue_admin_*``): pages of the default size
  (100), from the head to the tail in turn; ``queue_page_bytes`` the size of one.
- ``next_job_p50_ms``/``next_job_p99_ms``: a running job is cancelled (``POST .../cancel``,
  the admin) and the time until the next job's Job object exists in kubesim (a watch on
  Jobs labelled ``app.kubernetes.io/managed-by=thinkube``, in this process), one at a time,
  ``--samples`` times; ``cancel_p50_ms`` the cancel request alone. Beside it,
  ``bare_job_create_*``: the floor, a Job created straight through kubesim's API (POST)
  until the same kind of watch sees it.

**logs**: a job printing ``time.time()`` every 0.1 s (``--log-lines`` lines), followed with
``GET api/v1/jobs/{id}/logs`` (Server-Sent Events) by a client here; each line's latency is
its arrival here minus the time it printed. ``kube_log_*``: on kubesim with its process
runtime (the job's pod is a real process; the service follows its pod log); ``local_log_*``:
the service with ``inventory = 'local'`` (the job a process of this machine; as
``thinkube hub`` runs it); ``bare_sse_log_*``: the floor, a bare tornado server in a process
of its own running the same script and sending each line of its stdout pipe as an event.

**restart** (kubesim without its process runtime): ``--running-restart`` running and
``--queued-restart`` queued jobs; the service process is killed (SIGKILL) and the hub starts
it again (the hub notices within its service poll interval, 30 s by default):
``restart_detect_s`` kill until the new process exists, ``restart_ready_s`` from the new
process's start until ``api/v1/ready`` answers 200 and ``api/v1/queue`` answers,
``restart_total_s`` kill until then. ``restart_counts_before``/``_after``/``_settled``:
the totals per state (``GET api/v1/jobs?status=...``, the admin) before the kill, once
ready, and once the queue shows what it showed before (or after 60 s: ``restart_error``);
``restart_lost`` jobs that ended lost or failed; ``restart_accounted``: every job is still
there, as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from benchmarks.common import REPO, emit, percentile
from benchmarks.resources import cpu_seconds, service_process
from tests.kubesim.sim import free_port

SERVICE = "thinkube-resources"
ACCESS_SCOPE = f"access:services!service={SERVICE}"
ADMIN_SCOPE = "custom:thinkube:jobs:admin"
MANAGED_BY = "app.kubernetes.io/managed-by=thinkube"
NAMESPACE = "default"  # the service's jobs_namespace when it runs outside a pod
# Never runs on kubesim without its process runtime (job pods stay Running there).
SLEEPER = "import time\ntime.sleep(7200)\n"
TICKER = """import time
for _ in range({lines}):
    print(f"{{time.time():.6f}}", flush=True)
    time.sleep(0.1)
"""


def ms(seconds: float) -> float:
    return seconds * 1000


def spread(prefix: str, values: list[float], digits: int = 1) -> dict:
    """p50, p99 and max of `values` (milliseconds) as `{prefix}_p50_ms`, ...."""
    if not values:
        return {f"{prefix}_samples": 0}
    return {
        f"{prefix}_p50_ms": round(statistics.median(values), digits),
        f"{prefix}_p99_ms": round(percentile(values, 0.99), digits),
        f"{prefix}_max_ms": round(max(values), digits),
        f"{prefix}_samples": len(values),
    }


def rss_mb(process: psutil.Process | None) -> float | None:
    return round(process.memory_info().rss / 2**20, 1) if process else None


async def concurrently(items: Iterable, clients: int, work: Callable[..., Awaitable]) -> None:
    """`work(item)` for every item, `clients` at a time."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(clients)))


# --- kubesim ---------------------------------------------------------------------------------


async def start_kubesim(workdir: Path, *flags: str) -> tuple[asyncio.subprocess.Process, str]:
    """kubesim in a process of its own, with this Python's folder first on PATH (the
    process runtime runs a job's `python` from there); (process, URL)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.kubesim",
        *flags,
        "--kubeconfig",
        str(workdir / "kubeconfig"),
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO),
        env=env,
    )
    line = (await process.stdout.readline()).decode()
    if "kubesim listening on" not in line:
        process.terminate()
        await process.wait()
        raise RuntimeError(f"kubesim did not start: {line!r}")
    return process, line.split("kubesim listening on", 1)[1].strip()


async def stop_process(process: asyncio.subprocess.Process | None, grace_s: float = 20) -> None:
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        await process.wait()


class JobWatch:
    """A watch on kubesim's Jobs with a label selector: when each was first seen."""

    def __init__(self, url: str, selector: str) -> None:
        self.url = url.rstrip("/")
        self.selector = selector
        self.added: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def start(self) -> None:
        path = f"{self.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
        async with self._http.get(path, params={"labelSelector": self.selector}) as answer:
            version = (await answer.json())["metadata"]["resourceVersion"]
        self._task = asyncio.create_task(self._follow(path, version))

    async def _follow(self, path: str, version: str) -> None:
        params = {"labelSelector": self.selector, "watch": "1", "resourceVersion": version}
        async with self._http.get(path, params=params) as answer:
            async for line in answer.content:
                event = json.loads(line)
                if event["type"] == "ADDED":
                    self.added.put_nowait(
                        (time.perf_counter(), event["object"]["metadata"]["name"])
                    )

    def drain(self) -> None:
        while not self.added.empty():
            self.added.get_nowait()

    async def next_added(self, within_s: float = 30) -> tuple[float, str]:
        return await asyncio.wait_for(self.added.get(), within_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.close()


async def bare_job_create(url: str, samples: int) -> list[float]:
    """A suspended Job (no pod) created straight through kubesim's API, until a watch sees
    it: the floor of "the next Job exists" (ms)."""
    selector = "thinkube.io/benchmark=bare"
    watch = JobWatch(url, selector)
    await watch.start()
    path = f"{url.rstrip('/')}/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    latencies = []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(samples):
                job = {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": f"bare-{i}", "labels": {"thinkube.io/benchmark": "bare"}},
                    "spec": {
                        "suspend": True,
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "main", "image": "python:3.12"}],
                            }
                        },
                    },
                }
                started = time.perf_counter()
                async with http.post(path, json=job) as answer:
                    answer.raise_for_status()
                seen, _ = await watch.next_added()
                latencies.append(ms(seen - started))
                async with http.delete(f"{path}/bare-{i}") as answer:
                    answer.raise_for_status()
    finally:
        await watch.close()
    return latencies


# --- the hub and the service -----------------------------------------------------------------


def hub_config(workdir: Path, service_command: list[str], service_port: int, hub_port: int,
               user_tokens: dict[str, str], admin_token: str) -> str:  # fmt: skip
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
c.JupyterHub.api_tokens = {user_tokens!r}
c.JupyterHub.services = [
    {{
        "name": "{SERVICE}",
        "url": "http://127.0.0.1:{service_port}",
        "command": {service_command!r},
        "cwd": "{REPO}",
        "display": False,
        "oauth_no_confirm": True,
    }},
    {{"name": "benchmark-admin", "api_token": "{admin_token}"}},
]
c.JupyterHub.custom_scopes = {{
    "custom:thinkube:images:write": {{"description": "Write the thinkube image catalog."}},
    "{ADMIN_SCOPE}": {{"description": "See and cancel everyone's GPU jobs."}},
}}
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "{ACCESS_SCOPE}"], "users": {list(user_tokens.values())!r}}},
    {{
        "name": "benchmark-jobs-admin",
        "scopes": ["{ACCESS_SCOPE}", "{ADMIN_SCOPE}"],
        "services": ["benchmark-admin"],
    }},
    # what the local inventory reads of the hub (which servers run, what they hold)
    {{
        "name": "{SERVICE}",
        "scopes": ["{ACCESS_SCOPE}", "list:users", "read:servers", "admin:server_state"],
        "services": ["{SERVICE}"],
    }},
]
"""


@dataclass
class Hub:
    process: asyncio.subprocess.Process
    workdir: Path
    base: str  # the service's own URL, ending in "/"
    admin_token: str
    user_tokens: list[str]
    http: aiohttp.ClientSession = field(init=False)

    def __post_init__(self) -> None:
        self.http = aiohttp.ClientSession(
            base_url=self.base,
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=64),
        )

    def service(self) -> psutil.Process | None:
        return service_process(psutil.Process(self.process.pid))

    def log_tail(self) -> str:
        path = self.workdir / "service.log"
        return path.read_text()[-3000:] if path.exists() else "(no service log)"

    async def call(self, method: str, path: str, token: str | None = None, **kwargs):
        """(status, parsed JSON body or None, seconds)."""
        headers = {"Authorization": f"token {token or self.admin_token}"}
        started = time.perf_counter()
        async with self.http.request(method, path, headers=headers, **kwargs) as answer:
            body = await answer.read()
        took = time.perf_counter() - started
        try:
            document = json.loads(body) if body else None
        except ValueError:
            document = None
        return answer.status, document, took

    async def wait_ready(self, within_s: float) -> None:
        """Until `api/v1/ready` answers 200 and `api/v1/queue` answers."""
        deadline = time.perf_counter() + within_s
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(
                    "jupyterhub exited: " + (self.workdir / "hub.log").read_text()[-2000:]
                )
            with contextlib.suppress(aiohttp.ClientError):
                ready, _, _ = await self.call("GET", "api/v1/ready")
                if ready == 200 and (await self.call("GET", "api/v1/queue"))[0] == 200:
                    return
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the service is not ready: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def counts(self) -> dict[str, int]:
        """How many jobs each state holds (the admin's list totals)."""
        counts = {}
        for status in ("queued", "running", "completed", "failed", "cancelled", "lost"):
            code, document, _ = await self.call(
                "GET", "api/v1/jobs", params={"status": status, "limit": "1"}
            )
            if code != 200:
                raise RuntimeError(f"api/v1/jobs?status={status}: {code} {document}")
            counts[status] = document["total"]
        return counts

    async def submit(self, token: str, script: str, gpus: int, expected: str) -> tuple[float, dict]:
        """Seconds the submission took, and the job as answered."""
        body = {"script": script, "expected_time": expected, "gpus": gpus}
        code, document, took = await self.call("POST", "api/v1/jobs", token, json=body)
        if code != 201:
            raise RuntimeError(f"submit: {code} {document}")
        return took, document

    async def stop(self) -> None:
        await self.http.close()
        await stop_process(self.process)


async def start_hub(workdir: Path, service_args: list[str], users: int, ready_s: float) -> Hub:
    """A JupyterHub running the service with `service_args`, once the service is ready."""
    service_port, hub_port = free_port(), free_port()
    user_tokens = {secrets.token_hex(32): f"bench-{i:03d}" for i in range(users)}
    admin_token = secrets.token_hex(32)
    command = [
        sys.executable,
        "-m",
        "hub_service",
        "--db-url",
        f"sqlite:///{workdir / 'catalog.sqlite'}",
        "--log-file",
        str(workdir / "service.log"),
        *service_args,
    ]
    config = workdir / "jupyterhub_config.py"
    config.write_text(
        hub_config(workdir, command, service_port, hub_port, user_tokens, admin_token)
    )
    env = dict(os.environ)
    env["PATH"] = f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    jupyterhub = shutil.which("jupyterhub", path=env["PATH"]) or str(
        Path(sys.executable).parent / "jupyterhub"
    )
    log = os.open(workdir / "hub.log", os.O_WRONLY | os.O_CREAT, 0o600)
    process = await asyncio.create_subprocess_exec(
        jupyterhub,
        "-f",
        str(config),
        cwd=str(workdir),
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    os.close(log)
    hub = Hub(
        process,
        workdir,
        f"http://127.0.0.1:{service_port}/services/{SERVICE}/",
        admin_token,
        list(user_tokens),
    )
    try:
        await hub.wait_ready(ready_s)
    except BaseException:
        await hub.stop()
        raise
    return hub


async def fill_gpus(hub: Hub, clients: int) -> int:
    """A 1-GPU job on every GPU the nodes have; how many that is."""
    code, document, _ = await hub.call("GET", "api/v1/nodes")
    if code != 200:
        raise RuntimeError(f"api/v1/nodes: {code} {document}")
    gpus = sum((node.get("gpus") or {}).get("free", 0) for node in document["nodes"])
    tokens = hub.user_tokens

    async def one(i: int) -> None:
        await hub.submit(tokens[i % len(tokens)], SLEEPER, 1, "2h")

    await concurrently(range(gpus), clients, one)
    return gpus


async def settle(hub: Hub, running: int, queued: int, within_s: float = 120) -> dict:
    """Wait until the queue says `running` run and `queued` wait; its last answer."""
    deadline = time.perf_counter() + within_s
    while True:
        code, document, _ = await hub.call("GET", "api/v1/queue")
        if code == 200 and (document["running"], document["queued"]) == (running, queued):
            return document
        if time.perf_counter() > deadline:
            # what the service's node documents say is free, to tell a queue that does not
            # start what fits from GPUs held by something else
            nodes_code, nodes, _ = await hub.call("GET", "api/v1/nodes")
            free = (
                sum((node.get("gpus") or {}).get("free", 0) for node in nodes["nodes"])
                if nodes_code == 200
                else nodes_code
            )
            raise RuntimeError(
                f"the queue did not settle at {running} running, {queued} queued: "
                f"{document['running'] if code == 200 else code} running, "
                f"{document['queued'] if code == 200 else ''} queued, {free} GPUs free"
            )
        await asyncio.sleep(0.5)


# --- the parts -------------------------------------------------------------------------------


async def queue_part(args, workdir: Path) -> dict:
    figures: dict = {"nodes": args.nodes, "gpu_nodes": args.gpu_nodes, "users": args.users}
    kubesim, url = await start_kubesim(
        workdir,
        *("--nodes", str(args.nodes), "--gpu-nodes", str(args.gpu_nodes)),
        *("--pods", str(args.pods)),
    )
    hub = watch = None
    try:
        figures.update(spread("bare_job_create", await bare_job_create(url, args.samples)))
        hub = await start_hub(
            workdir, ["--kubeconfig", str(workdir / "kubeconfig")], args.users, args.ready_timeout
        )
        figures["rss_mb_idle"] = rss_mb(hub.service())

        figures["gpus"] = await fill_gpus(hub, args.clients)
        await settle(hub, figures["gpus"], 0)
        figures["rss_mb_before"] = rss_mb(hub.service())

        tokens = hub.user_tokens
        filled: list[float] = []

        async def one(i: int, latencies: list[float] = filled) -> None:
            took, job = await hub.submit(tokens[i % len(tokens)], SLEEPER, 1, "2h")
            if job["status"] != "queued":
                raise RuntimeError(f"a job started with every GPU taken: {job}")
            latencies.append(ms(took))

        service = hub.service()
        cpu_before = cpu_seconds(service)
        started = time.perf_counter()
        fill = args.queued - args.submit_samples
        await concurrently(range(fill), args.clients, one)
        took = time.perf_counter() - started
        figures["fill_s"] = round(took, 1)
        figures["fill_per_s"] = round(fill / took, 1)
        figures["service_cpu_ms_per_submit"] = round(
            ms(cpu_seconds(service) - cpu_before) / fill, 2
        )
        figures.update(spread("fill", filled))

        # What a person sees with the queue full: one submission at a time, and beside it
        # the floor, an authenticated request that does nothing (api/v1/ready).
        alone: list[float] = []
        floor: list[float] = []
        for i in range(fill, args.queued):
            await one(i, alone)
            code, _, took = await hub.call("GET", "api/v1/ready", tokens[i % len(tokens)])
            if code != 200:
                raise RuntimeError(f"api/v1/ready: {code}")
            floor.append(ms(took))
        figures["queued"] = args.queued
        figures.update(spread("submit", alone))
        figures.update(spread("ready", floor))
        await settle(hub, figures["gpus"], args.queued)
        figures["rss_mb_after"] = rss_mb(hub.service())
        figures["rss_growth_mb"] = round(figures["rss_mb_after"] - figures["rss_mb_before"], 1)

        # Pages of the default size, from the head to the tail of the queue in turn.
        pages = [{"offset": str(offset)} for offset in range(0, args.queued, QUEUE_PAGE)]
        for prefix, token in (("queue", tokens[0]), ("queue_admin", hub.admin_token)):
            times = []
            for n in range(args.queue_requests):
                params = pages[n % len(pages)]
                code, document, took = await hub.call("GET", "api/v1/queue", token, params=params)
                wanted = min(QUEUE_PAGE, args.queued - int(params["offset"]))
                if code != 200 or (document["queued"], len(document["jobs"])) != (
                    args.queued,
                    wanted,
                ):
                    raise RuntimeError(f"api/v1/queue: {code}, not a page of {wanted}")
                times.append(ms(took))
            figures.update(spread(prefix, times))
        async with hub.http.get(
            "api/v1/queue", headers={"Authorization": f"token {tokens[0]}"}
        ) as answer:
            figures["queue_page_bytes"] = len(await answer.read())

        watch = JobWatch(url, MANAGED_BY)
        await watch.start()
        code, document, _ = await hub.call(
            "GET", "api/v1/jobs", params={"status": "running", "limit": str(args.samples)}
        )
        next_job, cancels = [], []
        for job in document["jobs"][: args.samples]:
            watch.drain()
            started = time.perf_counter()
            code, cancelled, took = await hub.call("POST", f"api/v1/jobs/{job['id']}/cancel")
            if code != 200 or cancelled["status"] != "cancelled":
                raise RuntimeError(f"cancel: {code} {cancelled}")
            cancels.append(ms(took))
            seen, _ = await watch.next_added()
            next_job.append(ms(seen - started))
        figures.update(spread("next_job", next_job))
        figures.update(spread("cancel", cancels))
        figures["rss_mb_end"] = rss_mb(hub.service())
    finally:
        if watch is not None:
            await watch.close()
        if hub is not None:
            await hub.stop()
        await stop_process(kubesim)
    return figures


async def follow_log(hub: Hub, token: str, job_id: str) -> list[float]:
    """Each line's latency (ms): arrival here minus the time the job printed it."""
    latencies = []
    async with hub.http.get(
        f"api/v1/jobs/{job_id}/logs",
        headers={"Authorization": f"token {token}"},
        timeout=aiohttp.ClientTimeout(total=300),
    ) as answer:
        if answer.status != 200:
            raise RuntimeError(f"logs: {answer.status} {await answer.text()}")
        latencies = await read_events(answer.content)
    return latencies


async def read_events(stream: aiohttp.StreamReader) -> list[float]:
    """Server-Sent Events until `end` (or the stream's end): each line event's latency."""
    latencies = []
    name, data = "message", []
    async for raw in stream:
        arrived = time.time()
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "":
            if name == "end":
                break
            if name in ("stdout", "stderr", "combined"):
                with contextlib.suppress(ValueError):
                    latencies.append(ms(arrived - float("\n".join(data))))
            name, data = "message", []
    return latencies


async def log_latency(hub: Hub, lines: int) -> list[float]:
    token = hub.user_tokens[0]
    _, job = await hub.submit(token, TICKER.format(lines=lines), 0, "5m")
    latencies = await follow_log(hub, token, job["id"])
    if len(latencies) < lines * 0.9:
        raise RuntimeError(f"{len(latencies)} of {lines} lines came: {hub.log_tail()}")
    return latencies


SSE_ECHO = """
import asyncio, sys
from tornado import ioloop, web

script = sys.argv[1]


class Echo(web.RequestHandler):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
        )
        number = 0
        async for line in process.stdout:
            number += 1
            self.write(f"id: {number}\\nevent: stdout\\ndata: {line.decode().rstrip()}\\n\\n")
            await self.flush()
        await process.wait()
        self.finish("event: end\\ndata: {}\\n\\n")


web.Application([(r"/", Echo)]).listen(int(sys.argv[2]), "127.0.0.1")
print("listening", flush=True)
ioloop.IOLoop.current().start()
"""


async def bare_sse(lines: int) -> list[float]:
    """The same script's lines through a bare tornado SSE server (the floor)."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SSE_ECHO,
        TICKER.format(lines=lines),
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        if (await server.stdout.readline()).strip() != b"listening":
            raise RuntimeError("the SSE echo server did not start")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as answer:
                return await read_events(answer.content)
    finally:
        await stop_process(server)


async def logs_part(args, workdir: Path) -> dict:
    figures: dict = {"log_lines": args.log_lines}
    figures.update(spread("bare_sse_log", await bare_sse(args.log_lines)))

    kube_dir = workdir / "kube"
    kube_dir.mkdir()
    kubesim, _ = await start_kubesim(kube_dir, "--nodes", "2", "--process-runtime")
    hub = None
    try:
        hub = await start_hub(
            kube_dir, ["--kubeconfig", str(kube_dir / "kubeconfig")], 1, args.ready_timeout
        )
        figures.update(spread("kube_log", await log_latency(hub, args.log_lines)))
    finally:
        if hub is not None:
            await hub.stop()
        await stop_process(kubesim)

    local_dir = workdir / "local"
    local_dir.mkdir()
    local = [
        "--ThinkubeService.inventory=local",
        f"--ThinkubeService.jobs_folder={local_dir / 'jobs'}",
    ]
    hub = await start_hub(local_dir, local, 1, args.ready_timeout)
    try:
        figures.update(spread("local_log", await log_latency(hub, args.log_lines)))
    finally:
        await hub.stop()
    return figures


async def restart_part(args, workdir: Path) -> dict:
    # Generated GPU nodes come in a cycle of six models holding 20 GPUs together.
    gpu_nodes = -(-args.running_restart * 6 // 20)
    figures: dict = {"restart_gpu_nodes": gpu_nodes}
    kubesim, _ = await start_kubesim(
        workdir, "--nodes", str(max(args.nodes, gpu_nodes)), "--gpu-nodes", str(gpu_nodes)
    )
    hub = None
    try:
        hub = await start_hub(
            workdir, ["--kubeconfig", str(workdir / "kubeconfig")], args.users, args.ready_timeout
        )
        gpus = await fill_gpus(hub, args.clients)
        tokens = hub.user_tokens

        async def one(i: int) -> None:
            await hub.submit(tokens[i % len(tokens)], SLEEPER, 1, "2h")

        await concurrently(range(args.queued_restart), args.clients, one)
        await settle(hub, gpus, args.queued_restart)
        before = await hub.counts()
        figures["restart_counts_before"] = before

        old = hub.service()
        old_pid = old.pid
        killed = time.perf_counter()
        old.send_signal(signal.SIGKILL)
        new = None
        while new is None or new.pid == old_pid:
            if time.perf_counter() - killed > 120:
                raise RuntimeError("the hub did not start the service again")
            await asyncio.sleep(0.05)
            new = hub.service()
        detected = time.perf_counter()
        figures["restart_detect_s"] = round(detected - killed, 2)
        await hub.wait_ready(args.ready_timeout)
        ready = time.perf_counter()
        figures["restart_ready_s"] = round(time.time() - new.create_time(), 2)
        figures["restart_total_s"] = round(ready - killed, 2)
        figures["restart_counts_after"] = await hub.counts()
        try:
            await settle(hub, gpus, args.queued_restart, within_s=60)
        except RuntimeError as err:
            figures["restart_error"] = str(err)
        after = await hub.counts()
        figures["restart_counts_settled"] = after
        code, queue, _ = await hub.call("GET", "api/v1/queue")
        figures["restart_queue_after"] = {"running": queue["running"], "queued": queue["queued"]}
        figures["restart_lost"] = after["lost"] + after["failed"]
        figures["restart_accounted"] = after == before == figures["restart_counts_after"]
        figures["rss_mb_restarted"] = rss_mb(hub.service())
    finally:
        if hub is not None:
            await hub.stop()
        await stop_process(kubesim)
    return figures


QUEUE_PAGE = 100  # the service's default page of api/v1/queue

PARTS = {"queue": queue_part, "logs": logs_part, "restart": restart_part}
QUICK = {
    "nodes": 200,
    "gpu_nodes": 20,
    "users": 20,
    "queued": 1000,
    "samples": 20,
    "submit_samples": 50,
    "queue_requests": 20,
    "log_lines": 30,
    "running_restart": 100,
    "queued_restart": 500,
}


async def measure(args) -> dict:
    figures: dict = {"quick": args.quick}
    for name in args.parts:
        with contextlib.ExitStack() as stack:
            if args.keep:
                workdir = args.keep / name
                workdir.mkdir(parents=True)
            else:
                prefix = f"thinkube-bench-jobs-{name}-"
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
            started = time.perf_counter()
            try:
                figures.update(await PARTS[name](args, workdir))
            except Exception as err:  # the other parts' figures still count
                figures[f"{name}_error"] = f"{type(err).__name__}: {err}"
            figures[f"{name}_part_s"] = round(time.perf_counter() - started, 1)
    figures["targets"] = {
        "submit_p99_ms": 50,
        "next_job_p99_ms": 1000,
        "queue_p99_ms": 100,
        "rss_growth_mb": 200,
        "kube_log_p99_ms": 1000,
        "local_log_p99_ms": 1000,
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scaled down: about 2 minutes")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpu-nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=0, help="background pods")
    parser.add_argument("--users", type=int, default=100, help="hub users submitting in turn")
    parser.add_argument("--queued", type=int, default=10000, help="jobs queued behind full GPUs")
    parser.add_argument("--clients", type=int, default=16, help="submissions at a time")
    parser.add_argument(
        "--submit-samples", type=int, default=200, help="the last submissions, one at a time"
    )
    parser.add_argument("--samples", type=int, default=50, help="GPUs freed one at a time")
    parser.add_argument("--queue-requests", type=int, default=50, help="GET api/v1/queue each")
    parser.add_argument("--log-lines", type=int, default=100, help="lines, 0.1 s apart")
    parser.add_argument("--running-restart", type=int, default=1000)
    parser.add_argument("--queued-restart", type=int, default=5000)
    parser.add_argument("--ready-timeout", type=float, default=180)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--keep", type=Path, help="keep each part's files (hub and service logs) in this folder"
    )
    args = parser.parse_args()
    if args.quick:
        defaults = parser.parse_args([])
        for name, value in QUICK.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    emit(asyncio.run(measure(args)), args.json)


if __name__ == "__main__":
    main()
