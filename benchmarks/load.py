"""The availability route and the spawn page under load, through the real proxy.

    python -m benchmarks.load --nodes 1000 --pods 50000 --json load.json

kubesim runs in its own process with a generated cluster (and the shared claims the spawner
mounts); a real JupyterHub (the ``jupyterhub`` command: dummy authenticator, ThinkubeSpawner,
configurable-http-proxy) runs the availability service as a managed service watching it.
``wrk`` (Debian's package, installed by this benchmark when missing) drives the proxy's public
port with ``--clients`` connections (50) on ``--threads`` threads for ``--seconds`` per
scenario, after a short warm-up; a Lua script rotates the request headers over the
benchmark's users and counts the answers by status:

- ``availability_304``: ``GET services/thinkube-resources/api/v1/availability`` with a user's
  API token and ``If-None-Match`` naming the current version: a spawner revalidating its
  copy while the cluster is unchanged (every answer a 304, no body).
- ``availability_200``: the same without ``If-None-Match`` while pods are created in kubesim
  at ``--churn-per-second`` (and the oldest deleted), so the document keeps changing (about
  1 MB at 1,000 nodes): every answer a 200 with the whole document.
- ``spawn_page``: ``GET /hub/spawn`` by logged-in users (the hub's cookies), the cluster
  unchanged: each render asks the service (a 304) and renders the form.

Each runs as fast as answers come (every connection sends its next request when the last is
answered): the throughput. With ``--paced`` each runs again at its target's rate (each
connection pausing a random time around ``clients / rate`` between requests), as
``<name>_paced``: the latency, and the hub API's, at that rate rather than at saturation.

Meanwhile a separate process (``--background``) asks the hub's REST API ``GET /hub/api/user``
with a token every ``--probe-interval`` seconds, through the same proxy (``hub_api_p99_ms``:
what a person or script sees while the load runs) and at the hub's own port
(``hub_api_direct_p99_ms``: the hub's share of it, without the proxy's queue).

Per scenario: throughput, p50/p99/max latency (wrk's, from the sent request to the whole
answer), the answers by status and wrk's socket errors (``errors`` counts every answer that
is not the expected status plus every socket error), the probe's figures, and the CPU seconds
each process used during the run (the service, the hub, the proxy, kubesim, wrk, the probe):
on this 2-core machine they all share the cores, the load generator included. The load
average before each run is recorded, since other work on the machine shows in the figures.

``--profile DIR`` samples the service and the hub with py-spy (``pip install py-spy``) over
each timed run, as collapsed stacks; ``python -m benchmarks.load --top-frames DIR/*.txt``
lists the functions seen most in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common import (
    REPO,
    cluster_arguments,
    emit,
    percentile,
    shared_claims_scenario,
    start_kubesim,
)

SERVICE = "thinkube-resources"
ACCESS_SCOPE = f"access:services!service={SERVICE}"
BENCH_SERVICE = "load-benchmark"
AVAILABILITY_PATH = f"services/{SERVICE}/api/v1/availability"

TARGETS = {
    "availability_304": {"min_requests_per_s": 1000, "max_p99_ms": 100, "max_errors": 0},
    "availability_200": {"min_requests_per_s": 300, "max_errors": 0},
    "spawn_page": {"min_requests_per_s": 150, "max_p99_ms": 500, "max_errors": 0},
    "hub_api_during_load": {"max_p99_ms": 100},
}

# wrk's Lua: each thread rotates over the header sets in the file (one set per line, fields
# separated by tabs), starting at a different one; `response` (left out where bodies are
# large, as wrk then copies each body into Lua) counts answers by status; `done` prints one
# JSON line for this benchmark to read.
WRK_LUA = r"""
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

function init(args)
  variants = {}
  statuses = {}
  for line in io.lines(args[1]) do
    local headers = {}
    for field in string.gmatch(line, "[^\t]+") do
      local name, value = string.match(field, "^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    table.insert(variants, wrk.format("GET", wrk.path, headers))
  end
  counter = (id * 7919) % #variants
end

function request()
  counter = counter % #variants + 1
  return variants[counter]
end

RESPONSE_FUNCTION
DELAY_FUNCTION

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("statuses")
    if seen then
      for status, n in pairs(seen) do counts[status] = (counts[status] or 0) + n end
    end
  end
  local parts = {}
  for status, n in pairs(counts) do table.insert(parts, string.format('"%s": %d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, ' ..
    '"statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.timeout, e.status, table.concat(parts, ", ")))
end
"""

# Paced runs: each connection waits a random time around `clients / rate` seconds before
# its next request (a person's pause between pages), so that all of them together ask at
# about `rate` per second instead of as fast as answers come.
PACE = """
function delay()
  return math.random(LOW_MS, HIGH_MS)
end
"""

COUNT_RESPONSES = """
function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end
"""


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk could not be installed (apt-get install wrk)")
    return found


# -- the background process: the hub API probe and the pod churn ----------------------------


async def background(spec: dict) -> dict:
    """Until stdin closes: `GET hub/api/user` every `interval` seconds (the hub's latency
    for everything else), and, with `churn_per_second`, a pod created on a node of the
    cluster at that rate with the oldest of `churn_keep` deleted."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def wait_stdin() -> None:
        await reader.read()
        stop.set()

    probes = {name: ([], {}) for name in spec["probes"]}  # name: (latencies ms, errors)
    churn = {"created": 0, "deleted": 0, "failed": 0}

    async def probe(name: str, url: str) -> None:
        latencies, errors = probes[name]
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {spec['probe_token']}"}, timeout=30
        ) as http:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    answer = await http.get(url)
                    status = str(answer.status_code)
                except httpx.HTTPError as err:
                    status = type(err).__name__
                if status == "200":
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors[status] = errors.get(status, 0) + 1
                elapsed = time.perf_counter() - started
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, spec["interval"] - elapsed))

    async def pods() -> None:
        rate = spec.get("churn_per_second") or 0
        if not rate:
            return
        nodes, keep, prefix = spec["churn_nodes"], spec["churn_keep"], spec["churn_prefix"]
        async with httpx.AsyncClient(base_url=spec["kube_url"] + "/api/v1/", timeout=30) as kube:
            index = 0
            next_at = time.perf_counter()
            while not stop.is_set():
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{prefix}-{index}", "namespace": "default"},
                    "spec": {
                        "nodeName": nodes[index % len(nodes)],
                        "containers": [
                            {
                                "name": "main",
                                "image": "busybox:1.36",
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            }
                        ],
                    },
                }
                try:
                    answer = await kube.post("namespaces/default/pods", json=pod)
                    churn["created" if answer.status_code == 201 else "failed"] += 1
                    if index >= keep:
                        answer = await kube.delete(
                            f"namespaces/default/pods/{prefix}-{index - keep}",
                            params={"gracePeriodSeconds": 0},
                        )
                        churn["deleted" if answer.status_code == 200 else "failed"] += 1
                except httpx.HTTPError:
                    churn["failed"] += 1
                index += 1
                next_at += 1 / rate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.perf_counter()))
            for left in range(max(0, index - keep), index):  # the cluster as it was
                with contextlib.suppress(httpx.HTTPError):
                    await kube.delete(
                        f"namespaces/default/pods/{prefix}-{left}", params={"gracePeriodSeconds": 0}
                    )

    started = time.perf_counter()
    await asyncio.gather(
        wait_stdin(), pods(), *(probe(name, url) for name, url in spec["probes"].items())
    )
    seconds = time.perf_counter() - started
    result: dict = {}
    for name, (latencies, errors) in probes.items():
        result[f"{name}_p50_ms"] = round(statistics.median(latencies), 1) if latencies else None
        result[f"{name}_p99_ms"] = round(percentile(latencies, 0.99), 1) if latencies else None
        result[f"{name}_max_ms"] = round(max(latencies), 1) if latencies else None
        result[f"{name}_requests"] = len(latencies)
        result[f"{name}_errors"] = errors
    if spec.get("churn_per_second"):
        result["churn"] = {**churn, "per_second": round(churn["created"] / seconds, 1)}
    return result


def background_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    print(json.dumps(asyncio.run(background(spec))), flush=True)
    return 0


# -- the hub -------------------------------------------------------------------------------


# Put in the hub's config: every garbage collection the hub makes that takes 5 ms or more,
# as "generation milliseconds" lines, so the figures can say what part of the tail is the
# collector's.
GC_LOG = """
import gc as _gc, time as _time
_gc_log = open("GC_LOG_PATH", "a", buffering=1)
_gc_started = [0.0]
def _gc_timer(phase, info):
    if phase == "start":
        _gc_started[0] = _time.perf_counter()
    else:
        ms = (_time.perf_counter() - _gc_started[0]) * 1000
        if ms >= 5:
            _gc_log.write(f"{_time.time():.3f} {info['generation']} {ms:.1f}\\n")
_gc.callbacks.append(_gc_timer)
"""


def gc_pauses(path: Path, since: float, until: float) -> dict:
    """The hub's collections of 5 ms or more between two wall-clock times."""
    pauses = []
    if path.exists():
        for line in path.read_text().splitlines():
            at, generation, ms = line.split()
            if since <= float(at) <= until:
                pauses.append((int(generation), float(ms)))
    return {
        "hub_gc_pauses_over_5_ms": len(pauses),
        "hub_gc_pause_max_ms": max((ms for _, ms in pauses), default=0.0),
        "hub_gc_pause_total_ms": round(sum(ms for _, ms in pauses), 1),
    }


def hub_config(
    workdir: Path, kube_url: str, hub_port: int, internal_port: int, bench_token: str
) -> str:
    """A real JupyterHub: the availability service managed, ThinkubeSpawner, dummy login."""
    service_port = free_port()
    command = [
        sys.executable,
        "-m",
        "hub_service",
        "--kubeconfig",
        str(workdir / "kubeconfig"),
        "--db-url",
        f"sqlite:///{workdir / 'catalog.sqlite'}",
        "--log-file",
        str(workdir / "service.log"),
    ]
    return (
        GC_LOG.replace("GC_LOG_PATH", str(workdir / "hub-gc.log"))
        + f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{hub_port}/"
c.JupyterHub.hub_port = {internal_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.JupyterHub.db_url = "sqlite:///{workdir / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = "{workdir / "jupyterhub_cookie_secret"}"
c.ConfigurableHTTPProxy.pid_file = "{workdir / "jupyterhub-proxy.pid"}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.log_level = "WARN"
c.JupyterHub.spawner_class = "thinkube"
c.ThinkubeSpawner.k8s_api_host = "{kube_url}"
c.ThinkubeSpawner.namespace = "default"
c.JupyterHub.services = [
    {{
        "name": "{SERVICE}",
        "url": "http://127.0.0.1:{service_port}",
        "api_token": "{secrets.token_hex(32)}",
        "command": {command!r},
        "cwd": "{REPO}",
        "display": False,
        "oauth_no_confirm": True,
    }},
    {{"name": "{BENCH_SERVICE}", "api_token": "{bench_token}"}},
]
c.JupyterHub.custom_scopes = {{
    "custom:thinkube:images:write": {{"description": "Write the thinkube image catalog."}}
}}
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "{ACCESS_SCOPE}"]}},
    {{"name": "{SERVICE}", "scopes": ["{ACCESS_SCOPE}"], "services": ["{SERVICE}"]}},
    {{
        "name": "{BENCH_SERVICE}",
        "scopes": ["admin:users", "tokens", "{ACCESS_SCOPE}"],
        "services": ["{BENCH_SERVICE}"],
    }},
]
"""
    )


def free_port() -> int:
    from tests.kubesim.sim import free_port as kubesim_free_port

    return kubesim_free_port()


async def start_hub(workdir: Path, kube_url: str, bench_token: str):
    """The hub's process, its public URL (the proxy) and its own URL."""
    hub_port, internal_port = free_port(), free_port()
    (workdir / "jupyterhub_config.py").write_text(
        hub_config(workdir, kube_url, hub_port, internal_port, bench_token)
    )
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        [str(REPO / "node_modules" / ".bin"), str(Path(sys.executable).parent), env.get("PATH", "")]
    )
    env["KUBECONFIG"] = str(workdir / "kubeconfig")
    jupyterhub = shutil.which("jupyterhub", path=env["PATH"])
    log = os.open(workdir / "hub.log", os.O_WRONLY | os.O_CREAT, 0o600)
    hub = await asyncio.create_subprocess_exec(
        jupyterhub,
        "-f",
        str(workdir / "jupyterhub_config.py"),
        cwd=str(workdir),
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    os.close(log)
    return hub, f"http://127.0.0.1:{hub_port}/", f"http://127.0.0.1:{internal_port}/"


async def stop_hub(hub) -> None:
    if hub.returncode is not None:
        return
    hub.terminate()  # the hub stops its managed service and the proxy on SIGTERM
    try:
        await asyncio.wait_for(hub.wait(), 30)
    except TimeoutError:
        for child in psutil.Process(hub.pid).children(recursive=True):
            child.kill()
        hub.kill()
        await hub.wait()


def log_tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else f"(no {path.name})"


async def wait_until_ready(hub, url: str, api: httpx.AsyncClient, workdir: Path, within: float):
    """The hub answers and the service has listed the cluster."""
    deadline = time.perf_counter() + within
    while True:
        if hub.returncode is not None:
            raise RuntimeError(f"jupyterhub exited: {log_tail(workdir / 'hub.log')}")
        with contextlib.suppress(httpx.HTTPError):
            answer = await api.get(f"{url}services/{SERVICE}/api/v1/ready")
            if answer.status_code == 200:
                return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the service was not ready: {log_tail(workdir / 'service.log')}")
        await asyncio.sleep(0.5)


async def log_in(url: str, name: str) -> httpx.Cookies:
    """The cookies a browser holds after logging in through the hub's form."""
    async with httpx.AsyncClient(timeout=30) as browser:
        page = await browser.get(f"{url}hub/login")
        page.raise_for_status()
        xsrf = browser.cookies.get("_xsrf") or ""
        answer = await browser.post(
            f"{url}hub/login", data={"username": name, "password": name, "_xsrf": xsrf}
        )
        if answer.status_code != 302:
            raise RuntimeError(f"login of {name}: HTTP {answer.status_code}")
        return httpx.Cookies(browser.cookies)


async def user_token(api: httpx.AsyncClient, url: str, name: str, scopes: list[str] | None) -> str:
    body: dict = {"note": "load benchmark"}
    if scopes is not None:
        body["scopes"] = scopes
    answer = await api.post(f"{url}hub/api/users/{name}/tokens", json=body)
    if answer.status_code != 201:
        raise RuntimeError(f"token for {name}: HTTP {answer.status_code} {answer.text[:300]}")
    return answer.json()["token"]


def cookie_header(cookies: httpx.Cookies) -> str:
    # the hub's own cookies (its login and session); the _xsrf cookie only guards POSTs
    return "; ".join(f"{c.name}={c.value}" for c in cookies.jar if c.name.startswith("jupyterhub"))


# -- a run ---------------------------------------------------------------------------------


class Processes:
    """The processes whose CPU time is reported, found by their command lines."""

    def __init__(self, hub_pid: int, kubesim_pid: int):
        self.hub = psutil.Process(hub_pid)
        self.kubesim = psutil.Process(kubesim_pid)

    def named(self) -> dict[str, psutil.Process]:
        found = {"hub": self.hub, "kubesim": self.kubesim}
        for child in self.hub.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                line = " ".join(child.cmdline())
                if "hub_service" in line:
                    found["service"] = child
                elif "configurable-http-proxy" in line:
                    found["proxy"] = child
        return found


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    seconds = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[name] = times.user + times.system
    return seconds


async def run_wrk(
    wrk: str,
    url: str,
    headers: list[dict[str, str]],
    workdir: Path,
    args,
    seconds: float,
    count_statuses: bool,
    extra: dict[str, psutil.Process] | None = None,
    rate: float | None = None,
    on_start=None,
) -> dict:
    """wrk against `url` for `seconds` with the header sets rotated; its figures, and the
    CPU seconds of the named processes (plus wrk's own) over the run."""
    headers_file = workdir / "wrk-headers.txt"
    headers_file.write_text(
        "\n".join("\t".join(f"{k}: {v}" for k, v in h.items()) for h in headers) + "\n"
    )
    script = workdir / "wrk.lua"
    pace = ""
    if rate:
        # a little under clients / rate: each connection also waits for its answers
        mean_ms = args.clients * 1000 / rate * 0.95
        pace = PACE.replace("LOW_MS", str(round(mean_ms / 2))).replace(
            "HIGH_MS", str(round(mean_ms * 3 / 2))
        )
    script.write_text(
        WRK_LUA.replace("RESPONSE_FUNCTION", COUNT_RESPONSES if count_statuses else "").replace(
            "DELAY_FUNCTION", pace
        )
    )
    before = cpu_seconds(extra or {})
    process = await asyncio.create_subprocess_exec(
        wrk,
        "-t",
        str(args.threads),
        "-c",
        str(args.clients),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(headers_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    if on_start:
        on_start(process.pid)
    wrk_process = psutil.Process(process.pid)
    wrk_cpu = 0.0
    output = b""

    async def read() -> None:
        nonlocal output
        output = await process.stdout.read()

    reading = asyncio.ensure_future(read())
    while process.returncode is None:
        with contextlib.suppress(psutil.Error):
            times = wrk_process.cpu_times()
            wrk_cpu = times.user + times.system
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), 0.2)
    await reading
    after = cpu_seconds(extra or {})
    text = output.decode(errors="replace")
    match = re.search(r"^WRK-JSON (.*)$", text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"wrk printed no figures: {text[-2000:]}")
    figures = json.loads(match.group(1))
    cpu = {name: round(after[name] - before[name], 2) for name in after if name in before}
    cpu["wrk"] = round(wrk_cpu, 2)
    figures["cpu_s"] = cpu
    return figures


def start_profilers(args, scenario: str, named: dict[str, psutil.Process]) -> list:
    """With --profile DIR: py-spy samples the service and the hub over the timed run, as
    collapsed stacks (DIR/<scenario>-<process>.txt; summarise them with --top-frames)."""
    if not args.profile:
        return []
    py_spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if py_spy is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    args.profile.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(named[process].pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--duration",
                str(args.seconds),
                "--nonblocking",
                "--output",
                str(args.profile / f"{scenario}-{process}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for process in ("service", "hub")
        if process in named
    ]


def top_frames(path: Path, count: int = 40) -> str:
    """The functions seen most in a collapsed-stack profile: inclusive and own shares."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{path.name}: {total} samples", "inclusive:"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:count]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    lines.append("own:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:count]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    return "\n".join(lines)


def summarise(raw: dict, expected: int | None) -> dict:
    seconds = raw["duration_us"] / 1e6
    socket_errors = sum(v for k, v in raw["errors"].items() if k != "status")
    if expected is not None:
        unexpected = sum(n for status, n in raw["statuses"].items() if status != str(expected))
    else:
        unexpected = raw["errors"]["status"]  # wrk's own count: answers of 400 and above
    out = {
        "requests": raw["requests"],
        "seconds": round(seconds, 1),
        "requests_per_s": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p90_ms": round(raw["p90_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "max_ms": round(raw["max_us"] / 1000, 1),
        "errors": unexpected + socket_errors,
        "statuses": raw["statuses"] or None,
        "socket_errors": raw["errors"],
        "mb_per_s": round(raw["bytes"] / seconds / 2**20, 1),
        "cpu_s": raw["cpu_s"],
    }
    return out


async def scenario(
    name: str,
    wrk: str,
    url: str,
    headers: list[dict[str, str]],
    expected: int | None,
    workdir: Path,
    args,
    processes: Processes,
    probe: dict,
    churn: dict | None = None,
    rate: float | None = None,
) -> dict:
    """A warm-up, then the timed run with the background probe (and churn) alongside;
    paced at `rate` requests per second in all when given, else as fast as answers come."""
    await run_wrk(wrk, url, headers, workdir, args, args.warmup_seconds, False, rate=rate)
    spec = {**probe, **(churn or {})}
    spec_path = workdir / f"background-{name}.json"
    spec_path.write_text(json.dumps(spec))
    load_before = os.getloadavg()
    helper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.load",
        "--background",
        str(spec_path),
        cwd=str(REPO),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    named = processes.named()
    named["probe"] = psutil.Process(helper.pid)
    profilers = start_profilers(args, name, named)
    await asyncio.sleep(0.5)  # the helper's imports, before the load starts
    started = time.time()
    raw = await run_wrk(
        wrk,
        url,
        headers,
        workdir,
        args,
        args.seconds,
        expected is not None,
        extra=named,
        rate=rate,
    )
    ended = time.time()
    helper.stdin.close()
    out, _ = await asyncio.wait_for(helper.communicate(), 60)
    for profiler in profilers:
        await asyncio.get_running_loop().run_in_executor(None, profiler.wait)
    side = json.loads(out.decode().strip().splitlines()[-1])
    figures = summarise(raw, expected)
    if rate:
        figures["paced_at_requests_per_s"] = rate
    figures.update(side)
    figures.update(gc_pauses(workdir / "hub-gc.log", started, ended))
    figures["load_average_before"] = [round(v, 2) for v in load_before]
    return figures


async def measure(args, workdir: Path) -> dict:
    wrk = ensure_wrk()
    figures: dict = {"nodes": args.nodes, "gpu_nodes": args.gpu_nodes, "pods": args.pods}
    kubeconfig = workdir / "kubeconfig"
    kubesim = await start_kubesim(
        args.nodes, args.gpu_nodes, args.pods, kubeconfig, shared_claims_scenario(workdir)
    )
    figures["kubesim_startup_s"] = round(kubesim.startup_s, 1)
    bench_token = secrets.token_hex(32)
    hub = None
    try:
        hub, url, hub_url = await start_hub(workdir, kubesim.url, bench_token)
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {bench_token}"}, timeout=60
        ) as api:
            started = time.perf_counter()
            await wait_until_ready(hub, url, api, workdir, args.sync_timeout)
            figures["hub_and_service_ready_s"] = round(time.perf_counter() - started, 1)
            names = [f"load-{i:03d}" for i in range(args.users)]
            cookies = [await log_in(url, name) for name in names]
            tokens = [await user_token(api, url, name, [ACCESS_SCOPE]) for name in names]
            (await api.post(f"{url}hub/api/users/load-probe")).raise_for_status()
            probe_token = await user_token(api, url, "load-probe", None)
            availability_url = f"{url}{AVAILABILITY_PATH}"
            answer = await api.get(availability_url)
            answer.raise_for_status()
            version = answer.headers["ETag"]
            figures["availability_bytes"] = len(answer.content)
            figures["availability_gzip_bytes"] = len(gzip.compress(answer.content, 6))
            async with httpx.AsyncClient(timeout=60) as kube:
                kube_nodes = (await kube.get(f"{kubesim.url}/api/v1/nodes")).json()["items"]
            async with httpx.AsyncClient(timeout=60) as browser:
                page = await browser.get(
                    f"{url}hub/spawn", headers={"Cookie": cookie_header(cookies[0])}
                )
            if page.status_code != 200 or "profile-option-thinkube--where" not in page.text:
                raise RuntimeError(f"no spawn form: HTTP {page.status_code} {page.text[:500]}")
            figures["spawn_page_bytes"] = len(page.content)

        processes = Processes(hub.pid, kubesim.process.pid)
        probe = {
            "probes": {"hub_api": f"{url}hub/api/user", "hub_api_direct": f"{hub_url}hub/api/user"},
            "probe_token": probe_token,
            "interval": args.probe_interval,
        }
        token_headers = [{"Authorization": f"token {t}"} for t in tokens]
        schedulable = [
            n["metadata"]["name"] for n in kube_nodes if not n["spec"].get("unschedulable")
        ]
        churn = {
            "kube_url": kubesim.url,
            "churn_per_second": args.churn_per_second,
            "churn_nodes": schedulable[:200],
            "churn_keep": 50,
            "churn_prefix": "churn",
        }
        # name: (--scenarios key, URL, header sets, expected status, churn)
        runs = {
            "availability_304": (
                "304",
                availability_url,
                [{**h, "If-None-Match": version} for h in token_headers],
                304,
                None,
            ),
            "spawn_page": (
                "spawn",
                f"{url}hub/spawn",
                [{"Cookie": cookie_header(c)} for c in cookies],
                200,
                None,
            ),
            # the status is not counted: wrk would copy each 1 MB body into Lua
            "availability_200": ("200", availability_url, token_headers, None, churn),
        }
        results = {}
        for name, (key, target, headers, expected, changes) in runs.items():
            if key not in args.scenarios:
                continue
            run = (name, wrk, target, headers, expected, workdir, args, processes, probe, changes)
            results[name] = await scenario(*run)
            if args.paced:
                rate = TARGETS[name]["min_requests_per_s"]
                paced = (
                    f"{name}_paced",
                    *run[1:-1],
                    changes and {**changes, "churn_prefix": "paced"},
                )
                results[f"{name}_paced"] = await scenario(*paced, rate=rate)
        figures["scenarios"] = results
        figures["verdicts"] = verdicts(results)
    finally:
        if hub is not None:
            await stop_hub(hub)
        await kubesim.stop()
    figures["setup"] = {
        "machine": f"{psutil.cpu_count()} CPUs, shared by every process below",
        "load_generator": (
            f"wrk ({wrk}), {args.threads} threads, {args.clients} connections, "
            f"{args.seconds} s per scenario after {args.warmup_seconds} s of warm-up, "
            "through configurable-http-proxy's public port"
        ),
        "hub": "jupyterhub (a process of its own): dummy authenticator, ThinkubeSpawner, "
        "configurable-http-proxy, the availability service as a managed service",
        "kubesim": "a process of its own (python -m tests.kubesim), a generated cluster",
        "users": f"{args.users} users, each logged in (cookies) and with an API token "
        f"holding {ACCESS_SCOPE}; requests rotate over them",
        "probe": f"GET /hub/api/user with a user's token every {args.probe_interval} s, "
        "through the proxy (hub_api_*) and to the hub's own port (hub_api_direct_*), from a "
        "process of its own",
        "churn": f"{args.churn_per_second} pods/s created in kubesim during availability_200 "
        "(the oldest of 50 deleted)",
    }
    figures["targets"] = TARGETS
    return figures


def verdicts(results: dict) -> dict:
    """Each target against the run as fast as answers come (throughput) and, with --paced,
    the run at the target's rate (latency, and the hub API's latency, at that rate)."""
    out = {}
    for name, target in TARGETS.items():
        if name == "hub_api_during_load":
            for kind in ("", "_paced"):
                runs = [r for n, r in results.items() if n.endswith("_paced") == bool(kind)]
                if runs:
                    worst = max(r["hub_api_p99_ms"] or float("inf") for r in runs)
                    out[f"{name}{kind}"] = worst <= target["max_p99_ms"]
            continue
        for run_name in (name, f"{name}_paced"):
            run = results.get(run_name)
            if run is None:
                continue
            checks = {
                "requests_per_s": run["requests_per_s"] >= target["min_requests_per_s"]
                if run_name == name
                else None,
                "p99_ms": run["p99_ms"] <= target["max_p99_ms"] if "max_p99_ms" in target else None,
                "errors": run["errors"] <= target["max_errors"],
            }
            out[run_name] = {k: v for k, v in checks.items() if v is not None}
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--background"]:
        return background_main(argv[1])
    if argv[:1] == ["--top-frames"]:
        for path in argv[1:]:
            print(top_frames(Path(path)))
        return 0
    parser = cluster_arguments(__doc__)
    parser.add_argument("--clients", type=int, default=50, help="wrk's connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads")
    parser.add_argument("--seconds", type=int, default=15, help="timed seconds per scenario")
    parser.add_argument("--warmup-seconds", type=int, default=3)
    parser.add_argument("--users", type=int, default=50, help="logged-in users (and tokens)")
    parser.add_argument("--probe-interval", type=float, default=0.05)
    parser.add_argument("--churn-per-second", type=float, default=5)
    parser.add_argument(
        "--scenarios", nargs="+", default=["304", "200", "spawn"], choices=["304", "200", "spawn"]
    )
    parser.add_argument("--sync-timeout", type=float, default=300)
    parser.add_argument(
        "--paced",
        action="store_true",
        help="run each scenario again at its target's rate: the latency at that rate",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the hub's, the service's and wrk's files here"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the service and the hub into this folder"
    )
    args = parser.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(measure(args, args.workdir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="thinkube-load-") as tmp:
            figures = asyncio.run(measure(args, Path(tmp)))
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
