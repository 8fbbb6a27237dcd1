"""What the benchmarks share: a kubesim subprocess, a bare list of its pods, and percentiles."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


@dataclass
class KubesimProcess:
    process: asyncio.subprocess.Process
    url: str  # http://127.0.0.1:PORT
    startup_s: float  # process start until it listens, generated objects loaded

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].strip("/"))

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_kubesim(
    nodes: int, gpu_nodes: int, pods: int, kubeconfig: Path, scenario: Path | None = None
) -> KubesimProcess:
    """`python -m tests.kubesim` with a generated cluster, in a process of its own (as a
    real API server is), returned once it listens."""
    started = time.perf_counter()
    argv = ["--nodes", str(nodes), "--gpu-nodes", str(gpu_nodes), "--pods", str(pods)]
    argv += ["--kubeconfig", str(kubeconfig)]
    if scenario is not None:
        argv += ["--scenario", str(scenario)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kubesim", *argv, stdout=asyncio.subprocess.PIPE, cwd=str(REPO)
    )
    line = (await process.stdout.readline()).decode()
    if "kubesim listening on" not in line:
        process.terminate()
        await process.wait()
        raise RuntimeError(f"kubesim did not start: {line!r}")
    url = line.split("kubesim listening on", 1)[1].strip()
    return KubesimProcess(process, url, time.perf_counter() - started)


STATIC_SERVER = """
import sys
from tornado import ioloop, web

body = open(sys.argv[1], "rb").read()


class Static(web.RequestHandler):
    def compute_etag(self):
        return None

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", len(body))
        self.flush()
        self.finish(body)


web.Application([(r"/", Static)]).listen(int(sys.argv[2]), "127.0.0.1")
print("listening", flush=True)
ioloop.IOLoop.current().start()
"""


async def start_static_server(body_path: Path, port: int) -> asyncio.subprocess.Process:
    """A bare tornado server in a process of its own answering every GET with the bytes in
    `body_path` from memory: no hub, no authentication, nothing computed. Loaded by the same
    clients, it is the floor of any Python service answering with those bytes here."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STATIC_SERVER,
        str(body_path),
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    if (await process.stdout.readline()).strip() != b"listening":
        process.terminate()
        await process.wait()
        raise RuntimeError("the static server did not start")
    return process


async def bare_list(url: str, resource: str = "pods", page_size: int = 500) -> dict:
    """The floor of any informer's first sync: a plain client (aiohttp, no Kubernetes
    client) listing every object in pages of `page_size`, each page parsed with json.loads
    and dropped. ``bare_list_s`` is the time; ``bare_list_objects`` and ``bare_list_mb``
    what came."""
    started = time.perf_counter()
    objects = size = 0
    token = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        while True:
            params = {"limit": str(page_size)}
            if token:
                params["continue"] = token
            async with http.get(f"{url.rstrip('/')}/api/v1/{resource}", params=params) as answer:
                answer.raise_for_status()
                body = await answer.read()
            page = json.loads(body)
            objects += len(page["items"])
            size += len(body)
            token = page["metadata"].get("continue") or ""
            if not token:
                break
    return {
        "bare_list_s": round(time.perf_counter() - started, 2),
        "bare_list_objects": objects,
        "bare_list_mb": round(size / 2**20, 1),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def cluster_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the generated cluster's size and `--json`, shared by the benchmarks."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpu-nodes", type=int, default=60)
    parser.add_argument("--pods", type=int, default=50000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def emit(figures: dict, path: Path | None) -> None:
    """Print the figures as JSON, and write them to `path` when given."""
    text = json.dumps(figures, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")


SHARED_CLAIMS = ("thinkube-notebooks", "thinkube-datasets", "thinkube-models")


def shared_claims_scenario(workdir: Path, storage_class: str = "seaweedfs") -> Path:
    """A kubesim scenario file with the claims ThinkubeSpawner mounts by default (and the
    storage class that binds them), so that its spawn form finds them mountable."""
    manifests = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "seaweedfs-csi-driver",
            "volumeBindingMode": "Immediate",
        },
        *(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": storage_class,
                    "resources": {"requests": {"storage": "100Gi"}},
                },
            }
            for name in SHARED_CLAIMS
        ),
    ]
    path = workdir / "shared-claims.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    return path
