"""The spawn form and fail-fast at cluster scale, through a real JupyterHub and proxy.

    python -m benchmarks.spawn_form --nodes 1000 --pods 50000 --json spawn_form.json

kubesim runs in its own process (`python -m tests.kubesim`, a generated cluster loaded
through the bulk path, plus the PersistentVolumeClaims of the form from a `--scenario` file),
as a real cluster would: its objects are not in the hub's heap, so the hub's garbage
collector does not walk them. This process runs JupyterHub's MockHub (PAM mocked: the
password is the user name) behind the real configurable-http-proxy, with the availability
service as a hub-managed subprocess watching the kubesim: the harness of the end-to-end tests
(tests/hub_fixtures.py), given only the kubesim's kubeconfig.

Figures:

- `form_p50_ms` / `form_p99_ms`: `GET /hub/spawn` through the proxy by a logged-in user
  (a browser's cookies), the whole page read; each render asks the service once. While the
  cluster is unchanged the service answers 304 and the hub reuses the menu it built.
- `form_changing_p50_ms` / `form_changing_p99_ms`: the same, with a pod created before each
  render, so that every render gets a new version of the availability document (about 1 MB
  at 1,000 nodes), parses it and builds the menu anew: a busy cluster's case.
- `service_calls_per_spawn`: the availability service requests the spawner made for one
  form render plus one submit (counted by wrapping `AvailabilityClient.fetch` for the whole
  process, checked against the spawner's own `AvailabilityClient.calls`).
- `menu_build_p50_ms` / `menu_build_p99_ms`: building the menu from a changed availability
  document (the changing renders), of which `filter_p50_ms` / `filter_p99_ms` is the
  feasibility filter's part: each node's verdict for each placement's pod, and the room
  kept per placement.
- `failfast_s`: a pod the scheduler cannot place although the filter could not know (the
  admin's own volume names a claim that does not exist: kube-scheduler's "persistentvolumeclaim
  ... not found"), submitted from the form, until the hub API shows the spawn failed (no
  server, none pending), with the default `fail_fast_seconds` (10). A choice the filter can
  judge (an admin node selector that matches no node) is refused at submit instead, before a
  pod exists: `refused_at_submit_ms`.
- `kubespawner_default_s`: the same unschedulable pod from a plain `KubeSpawner` with
  `start_timeout = 60`, started through the REST API, until the spawn failed: it waits the
  whole timeout.

`--curve` runs the sizes 1,000 / 2,000 / 5,000 nodes with 30 pods each and prints one JSON
with every size (the kubespawner baseline at the largest only).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urljoin

# kubernetes_asyncio reads KUBECONFIG when imported and kubespawner loads that file once: a
# placeholder (as tests/conftest.py does), never the user's own cluster; each client here is
# pointed at the kubesim explicitly.
_placeholder_dir = tempfile.mkdtemp(prefix="spawn-form-bench-")
atexit.register(shutil.rmtree, _placeholder_dir, ignore_errors=True)
os.environ["KUBECONFIG"] = os.path.join(_placeholder_dir, "kubeconfig")
with open(os.environ["KUBECONFIG"], "w") as _f:
    _f.write(
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
        "clusters: [{name: none, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: none, user: {}}]\n"
        "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
    )

import httpx  # noqa: E402
import yaml  # noqa: E402

import tests.conftest  # noqa: E402  (sets its own placeholder; removed at exit)
from benchmarks.common import cluster_arguments, emit, percentile, start_kubesim  # noqa: E402
from tests.e2e.test_thinkube_spawner import (  # noqa: E402
    CLAIMS,
    SINGLEUSER,
    claim,
    form_fields,
    hub_config,
    option,
    storage_class,
    submit,
)
from tests.hub_fixtures import running_hub  # noqa: E402
from thinkube_spawner import menu as menu_module  # noqa: E402
from thinkube_spawner import spawner as spawner_module  # noqa: E402
from thinkube_spawner.availability import AvailabilityClient  # noqa: E402
from thinkube_spawner.spawner import _built_menus  # noqa: E402

atexit.register(shutil.rmtree, tests.conftest._session_dir, ignore_errors=True)
os.environ["KUBECONFIG"] = os.path.join(_placeholder_dir, "kubeconfig")

UNMATCHED_SELECTOR = {"hub.jupyter.org/node-purpose": "user"}
# An admin volume whose claim does not exist: the scheduler refuses the pod, the filter
# (which does not read volumes) cannot know.
MISSING_CLAIM = {
    "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "home-{username}"}}],
    "volume_mounts": [{"name": "home", "mountPath": "/home/jovyan/work"}],
}
FORM_USER = "bench"
KUBESPAWNER_USER = "plain"
QUIET = {"JupyterHub": {"log_level": "WARN"}}


class FetchCounter:
    """Counts every availability fetch in this process, whichever spawner makes it."""

    def __init__(self) -> None:
        self.count = 0
        self.callers: list[str] = []  # what asked ThinkubeSpawner.menu() for fresh data
        self._original = AvailabilityClient.fetch

    def __enter__(self) -> FetchCounter:
        original = self._original
        counter = self

        async def fetch(client, *args, **kwargs):
            counter.count += 1
            # the awaiting coroutines' frames: fetch <- menu <- its caller
            caller = sys._getframe(2)
            counter.callers.append(caller.f_code.co_name if caller else "?")
            return await original(client, *args, **kwargs)

        AvailabilityClient.fetch = fetch
        return self

    def __exit__(self, *exc) -> None:
        AvailabilityClient.fetch = self._original


class MenuTimer:
    """Times each menu build in the hub, and the feasibility filter's part of it."""

    def __init__(self) -> None:
        self.builds: list[float] = []
        self.filter: list[float] = []
        self._in_build = 0.0

    def __enter__(self) -> MenuTimer:
        build, fill, timer = spawner_module.build_menu, menu_module._Room.fill, self
        self._originals = (build, fill)

        def timed_build(*args, **kwargs):
            timer._in_build = 0.0
            started = time.perf_counter()
            try:
                return build(*args, **kwargs)
            finally:
                timer.builds.append((time.perf_counter() - started) * 1000)
                timer.filter.append(timer._in_build)

        def timed_fill(room, *args, **kwargs):
            started = time.perf_counter()
            try:
                return fill(room, *args, **kwargs)
            finally:
                timer._in_build += (time.perf_counter() - started) * 1000

        spawner_module.build_menu, menu_module._Room.fill = timed_build, timed_fill
        return self

    def __exit__(self, *exc) -> None:
        spawner_module.build_menu, menu_module._Room.fill = self._originals

    def figures(self) -> dict:
        if not self.builds:
            return {}
        return {
            "menu_builds": len(self.builds),
            "menu_build_p50_ms": round(statistics.median(self.builds), 1),
            "menu_build_p99_ms": round(percentile(self.builds, 0.99), 1),
            "filter_p50_ms": round(statistics.median(self.filter), 1),
            "filter_p99_ms": round(percentile(self.filter, 0.99), 1),
        }


class GcPauses:
    """The hub process's garbage-collector pauses (kubesim runs in its own process)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses.append((info["generation"], (time.perf_counter() - self._started) * 1000))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


async def wait_failed(api: httpx.AsyncClient, user: str, within: float) -> tuple[float, dict]:
    """Poll the hub API until `user` has no server and nothing pending."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        model = (await api.get(f"users/{user}")).json()
        if not model.get("servers") and model.get("pending") is None:
            return time.monotonic(), model
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the spawn of {user} had not failed within {within}s")


async def renders_while_the_cluster_changes(
    kubesim: SimpleNamespace, browser: httpx.AsyncClient, spawn_url: str, spawner, renders: int
) -> dict:
    """`GET /hub/spawn` after each of `renders` pod creations: every render then gets a new
    availability version (the service answers in full, the hub parses it and builds the menu
    anew), the path a busy cluster takes."""
    async with httpx.AsyncClient(base_url=f"{kubesim.url}/api/v1/", timeout=30) as kube:
        node = (await kube.get("nodes", params={"limit": 1})).json()["items"][0]["metadata"]["name"]
        times, versions = [], set()
        for index in range(renders):
            name = f"churn-{index}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node,
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox:1.36",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }
                    ],
                },
            }
            (await kube.post("namespaces/default/pods", json=pod)).raise_for_status()
            await asyncio.sleep(0.3)  # the service's debounce (0.1 s) and rebuild
            started = time.perf_counter()
            page = await browser.get(spawn_url)
            times.append((time.perf_counter() - started) * 1000)
            page.raise_for_status()
            versions.add(_built_menus.get(spawner.menu_settings())[0])  # the version rendered
        for index in range(renders):
            await kube.delete(
                f"namespaces/default/pods/churn-{index}", params={"gracePeriodSeconds": 0}
            )
    return {
        "form_changing_renders": renders,
        "form_changing_versions_seen": len(versions),
        "form_changing_p50_ms": round(statistics.median(times), 1),
        "form_changing_p99_ms": round(percentile(times, 0.99), 1),
        "form_changing_max_ms": round(max(times), 1),
    }


async def thinkube_run(
    kubesim: SimpleNamespace,
    workdir: Path,
    renders: int,
    changing_renders: int,
    counter: FetchCounter,
) -> dict:
    config = merge(
        # hub_config reads only `.url` (the spawner's k8s_api_host)
        hub_config(kubesim, **MISSING_CLAIM),
        {"ThinkubeSpawner": {"fail_fast_seconds": 10.0}, **QUIET},
    )
    async with running_hub(workdir, sim=None, kubeconfig=kubesim.kubeconfig, config=config) as hub:
        admin = hub.token("bench-admin", roles_=["admin"])
        browser = await hub.login(FORM_USER)
        spawn_url = urljoin(hub.url, "hub/spawn")
        # warm up: the first render creates the spawner and its client
        for _ in range(3):
            page = await browser.get(spawn_url, follow_redirects=True)
            page.raise_for_status()
        html = page.text
        spawner = hub.app.users[FORM_USER].spawner
        if "profile-option-thinkube--where" not in html:
            raise RuntimeError(f"no spawn form: {html[:1000]}")
        times = []
        with GcPauses() as gc_pauses:
            for _ in range(renders):
                started = time.perf_counter()
                page = await browser.get(spawn_url)
                times.append((time.perf_counter() - started) * 1000)
                if page.status_code != 200:
                    raise RuntimeError(f"GET /hub/spawn: HTTP {page.status_code}")
        full = [ms for generation, ms in gc_pauses.pauses if generation == 2]
        page_bytes = len(page.content)
        with MenuTimer() as menu_timer:
            changing = await renders_while_the_cluster_changes(
                kubesim, browser, spawn_url, spawner, changing_renders
            )
        changing.update(menu_timer.figures())

        # one render + one submit of an unschedulable choice
        before_process, before_spawner = counter.count, spawner.availability.calls
        page = await browser.get(spawn_url)
        fields = form_fields(page.text)
        fields.update({option("where"): "cpu", option("cpu"): "1", option("memory"): "2"})
        started = time.monotonic()
        response = await submit(browser, hub, fields)
        calls_at_submit_response = counter.count - before_process
        async with httpx.AsyncClient(
            base_url=urljoin(hub.url, "hub/api/"),
            headers={"Authorization": f"token {admin}"},
            timeout=30,
        ) as api:
            if response.status_code == 302:
                ended, _ = await wait_failed(api, FORM_USER, within=120)
                progress = (await api.get(f"users/{FORM_USER}/server/progress")).text
                seen_by = (
                    "hub API: no server, none pending (the form POST redirected to spawn-pending)"
                )
            else:
                ended = time.monotonic()
                progress = unescape(response.text)
                seen_by = f"the form POST's answer (HTTP {response.status_code}, form re-rendered)"
        failfast_s = ended - started
        message = next(
            (line.strip() for line in unescape(progress).splitlines() if "not found" in line),
            None,
        )
        spawner_calls = spawner.availability.calls - before_spawner
        calls = counter.count - before_process
        callers = counter.callers[before_process:]
        # the failed spawn's message fetches once more, to suggest where capacity is free
        suggestion = callers.count("unschedulable_message")
        left = [p.metadata.name for p in await singleuser_pods(kubesim.kubeconfig)]
        return {
            "renders": renders,
            "page_bytes": page_bytes,
            "form_p50_ms": round(statistics.median(times), 1),
            "form_p99_ms": round(percentile(times, 0.99), 1),
            "form_p90_ms": round(percentile(times, 0.90), 1),
            "form_max_ms": round(max(times), 1),
            "form_renders_over_150_ms": sum(ms > 150 for ms in times),
            **changing,
            "gc_full_collections_during_renders": len(full),
            "gc_full_collection_ms_max": round(max(full), 1) if full else 0,
            "service_calls_per_spawn": calls - suggestion,
            "service_calls_per_spawn_detail": {
                "measured": "one GET /hub/spawn, then one POST /hub/spawn of the rendered "
                "choice; availability fetches counted in the process",
                "by_caller": callers,
                "render_plus_submit": calls - suggestion,
                "failfast_suggestion": suggestion,
                "total_with_failed_spawn": calls,
                "spawner_AvailabilityClient_calls": spawner_calls,
                "up_to_the_submit_response": calls_at_submit_response,
            },
            "failfast_s": round(failfast_s, 2),
            "failfast_seen_by": seen_by,
            "failfast_message": message[:400] if message else None,
            "failfast_pods_left": left,
            **await refused_at_submit(kubesim, workdir / "hub-selector"),
        }


async def refused_at_submit(kubesim: SimpleNamespace, workdir: Path) -> dict:
    """A choice the filter can judge (an admin node selector no node matches): the submit is
    refused with the reason before a pod exists."""
    config = merge(hub_config(kubesim, node_selector=UNMATCHED_SELECTOR), QUIET)
    async with running_hub(workdir, sim=None, kubeconfig=kubesim.kubeconfig, config=config) as hub:
        browser = await hub.login(FORM_USER)
        page = await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)
        fields = form_fields(page.text)
        fields.update({option("where"): "cpu", option("cpu"): "1", option("memory"): "2"})
        started = time.perf_counter()
        response = await submit(browser, hub, fields)
        elapsed = (time.perf_counter() - started) * 1000
        text = unescape(response.text)
        reason = next((line.strip() for line in text.splitlines() if "cannot start" in line), None)
        return {
            "refused_at_submit_ms": round(elapsed, 1),
            "refused_at_submit_http": response.status_code,
            "refused_at_submit_message": reason[:300] if reason else None,
            "refused_at_submit_pods_left": len(await singleuser_pods(kubesim.kubeconfig)),
        }


async def kubespawner_run(kubesim: SimpleNamespace, workdir: Path, start_timeout: int) -> dict:
    config = merge(
        {
            "JupyterHub": {"spawner_class": "kubespawner.KubeSpawner"},
            "KubeSpawner": {
                "k8s_api_host": kubesim.url,
                "namespace": "default",
                "cmd": [SINGLEUSER],
                **MISSING_CLAIM,
                "start_timeout": start_timeout,
                "http_timeout": 30,
                "cpu_limit": 1.0,
                "mem_limit": "2G",
            },
        },
        QUIET,
    )
    async with running_hub(workdir, sim=None, kubeconfig=kubesim.kubeconfig, config=config) as hub:
        admin = hub.token("bench-admin", roles_=["admin"])
        hub.user(KUBESPAWNER_USER)
        async with httpx.AsyncClient(
            base_url=urljoin(hub.url, "hub/api/"),
            headers={"Authorization": f"token {admin}"},
            timeout=start_timeout + 30,
        ) as api:
            started = time.monotonic()
            response = await api.post(f"users/{KUBESPAWNER_USER}/server")
            if response.status_code == 202:
                ended, _ = await wait_failed(api, KUBESPAWNER_USER, within=start_timeout + 60)
            else:
                ended = time.monotonic()
        return {
            "kubespawner_default_s": round(ended - started, 2),
            "kubespawner_start_http": response.status_code,
            "kubespawner_pods_left": [
                p.metadata.name for p in await singleuser_pods(kubesim.kubeconfig)
            ],
        }


async def singleuser_pods(kubeconfig: Path) -> list:
    from kubernetes_asyncio import client

    api = await tests.conftest.api_client_for(kubeconfig)
    try:
        return (
            await client.CoreV1Api(api).list_namespaced_pod(
                "default", label_selector="component=singleuser-server"
            )
        ).items
    finally:
        await api.close()


def write_claims(workdir: Path) -> Path:
    """The storage claims the spawner mounts, as a kubesim scenario file."""
    scenario = workdir / "claims.yaml"
    scenario.write_text(
        yaml.safe_dump([storage_class("seaweedfs"), *[claim(name) for name in CLAIMS]])
    )
    return scenario


async def count_pods(kubeconfig: Path) -> int:
    """All pods, all namespaces, through the API (the raw path: 50,000 pods decoded fast)."""
    from kubernetes_asyncio import client

    api = await tests.conftest.api_client_for(kubeconfig)
    try:
        response = await client.CoreV1Api(api).list_pod_for_all_namespaces(_preload_content=False)
        return len(json.loads(await response.read())["items"])
    finally:
        await api.close()


async def measure(args) -> dict:
    result: dict = {"nodes": args.nodes, "gpu_nodes": args.gpu_nodes}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sim_process = await start_kubesim(
            args.nodes, args.gpu_nodes, args.pods, workdir / "kubeconfig", write_claims(workdir)
        )
        try:
            result["kubesim_startup_s"] = round(sim_process.startup_s, 2)
            kubesim = SimpleNamespace(url=sim_process.url, kubeconfig=workdir / "kubeconfig")
            result["pods"] = await count_pods(kubesim.kubeconfig)
            with FetchCounter() as counter:
                started = time.perf_counter()
                result.update(
                    await thinkube_run(
                        kubesim,
                        workdir / "hub-thinkube",
                        args.renders,
                        args.changing_renders,
                        counter,
                    )
                )
                result["thinkube_hub_run_s"] = round(time.perf_counter() - started, 1)
            if not args.skip_kubespawner:
                started = time.perf_counter()
                result.update(
                    await kubespawner_run(kubesim, workdir / "hub-kubespawner", args.start_timeout)
                )
                result["kubespawner_hub_run_s"] = round(time.perf_counter() - started, 1)
        finally:
            await sim_process.stop()
    result["kubespawner_default_note"] = (
        f"plain kubespawner.KubeSpawner, start_timeout = {args.start_timeout} s (z2jh's default "
        "is 300 s), the same missing claim; it waits the full start_timeout, as there is no "
        "fail-fast: the figure is the timeout plus the hub's own overhead"
    )
    result["setup"] = (
        "kubesim runs in its own process (python -m tests.kubesim, as a real cluster would: "
        "its objects are outside the hub's heap and garbage collector); the hub (MockHub) "
        "runs in this process; configurable-http-proxy and the availability service "
        "(hub-managed) are separate processes; all on one machine"
    )
    result["targets"] = {
        "form_p99_ms": 100,
        "form_changing_p99_ms": 250,
        "filter_p99_ms": 20,
        "service_calls_per_spawn": 2,
        "failfast_s": 20,
    }
    return result


CURVE = ((1000, 30000), (2000, 60000), (5000, 150000))


def main(argv: list[str] | None = None) -> int:
    parser = cluster_arguments(__doc__)
    parser.add_argument("--renders", type=int, default=200, help="timed GET /hub/spawn")
    parser.add_argument(
        "--changing-renders",
        type=int,
        default=50,
        help="timed GET /hub/spawn, each after a pod was created (a new availability version)",
    )
    parser.add_argument("--start-timeout", type=int, default=60)
    parser.add_argument("--skip-kubespawner", action="store_true")
    parser.add_argument("--curve", action="store_true", help="1k, 2k and 5k nodes, 30 pods each")
    args = parser.parse_args(argv)
    if not args.curve:
        emit(asyncio.run(measure(args)), args.json)
        return 0
    sizes = []
    for nodes, pods in CURVE:
        largest = (nodes, pods) == CURVE[-1]
        run = argparse.Namespace(
            **{
                **vars(args),
                "nodes": nodes,
                "pods": pods,
                "gpu_nodes": max(args.gpu_nodes, nodes * 6 // 100),
                "skip_kubespawner": args.skip_kubespawner or not largest,
            }
        )
        sizes.append(asyncio.run(measure(run)))
    emit({"curve": sizes}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
