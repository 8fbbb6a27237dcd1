"""kubesim at cluster scale: start-up, a full cluster-wide pod list, and watch latency.

    python -m benchmarks.kubesim_scale --nodes 1000 --pods 50000 --json kubesim.json

Figures: `startup_s` (process start until it prints that it listens, generated objects
loaded), `list_pods_s` (GET all pods, all namespaces, read and decoded by
kubernetes_asyncio's raw path), `watch_latency_ms_p50/p99/max` (a pod created through the
API until its ADDED event reaches a watching client).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from kubernetes_asyncio import client, config

from benchmarks.common import cluster_arguments, emit, start_kubesim


async def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubesim = await start_kubesim(args.nodes, args.gpu_nodes, args.pods, kubeconfig)
        startup_s = kubesim.startup_s
        try:
            configuration = client.Configuration()
            await config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration
            )
            async with client.ApiClient(configuration) as api:
                core = client.CoreV1Api(api)
                list_times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    response = await core.list_pod_for_all_namespaces(_preload_content=False)
                    body = json.loads(await response.read())
                    list_times.append(time.perf_counter() - started)
                listed = len(body["items"])
                latencies = await watch_latencies(
                    core, body["metadata"]["resourceVersion"], args.watch_events
                )
        finally:
            await kubesim.stop()
    latencies.sort()
    return {
        "nodes": args.nodes,
        "pods": listed,
        "startup_s": round(startup_s, 2),
        "list_pods_s": round(min(list_times), 3),
        "list_pods_s_max": round(max(list_times), 3),
        "watch_latency_ms_p50": round(statistics.median(latencies), 2),
        "watch_latency_ms_p99": round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2
        ),
        "watch_latency_ms_max": round(latencies[-1], 2),
        "targets": {"startup_s": 20, "list_pods_s": 3, "watch_latency_ms": 50},
    }


async def watch_latencies(core, resource_version: str, count: int) -> list[float]:
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    response = await core.list_namespaced_pod(
        "default",
        watch=True,
        resource_version=resource_version,
        _preload_content=False,
        field_selector="metadata.namespace=default",
    )

    async def follow():
        async for line in response.content:
            event = json.loads(line)
            name = event["object"]["metadata"]["name"]
            if event["type"] == "ADDED" and name.startswith("latency-"):
                arrived[name] = time.perf_counter()
                if len(arrived) == count:
                    return

    reader = asyncio.ensure_future(follow())
    for i in range(count):
        name = f"latency-{i}"
        body = {
            "metadata": {"name": name},
            "spec": {"schedulerName": "none", "containers": [{"name": "c", "image": "busybox"}]},
        }
        sent[name] = time.perf_counter()
        await core.create_namespaced_pod("default", body)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(reader, 30)
    response.release()
    return [(arrived[name] - sent[name]) * 1000 for name in sent]


def main() -> None:
    parser = cluster_arguments(__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="full lists to time")
    parser.add_argument("--watch-events", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
