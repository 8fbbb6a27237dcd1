"""DCGM exporter parsing and scraping, against real local HTTP servers."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from hub_service.dcgm import (
    DcgmScraper,
    metrics_for_node,
    parse_dcgm,
    parse_dcgm_counted,
    parse_dcgm_with_pods,
)

LABELS_01 = (
    'pci_bus_id="00000000:{bus}:00.0",device="nvidia{gpu}",modelName="NVIDIA A100-SXM4-80GB",'
    'Hostname="gpu-node-01",DCGM_FI_DRIVER_VERSION="570.86.15"'
)


def _gpu_labels(gpu: int, uuid: str, bus: str, pod: str = "") -> str:
    labels = f'gpu="{gpu}",UUID="{uuid}",' + LABELS_01.format(bus=bus, gpu=gpu)
    if pod:
        labels += f',container="notebook",namespace="jupyterhub",pod="{pod}"'
    return labels


GPU0 = _gpu_labels(0, "GPU-5d8f3c1e-0b6a-4e07-9c1f-2a7d9b3e4f10", "07", "jupyter-alice")
GPU1 = _gpu_labels(1, "GPU-8a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9", "0F")

# As dcgm-exporter 3.x prints it with --kubernetes: HELP/TYPE for every field, other metrics.
NODE_01 = f"""\
# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{{{GPU0}}} 1410
DCGM_FI_DEV_SM_CLOCK{{{GPU1}}} 210
# HELP DCGM_FI_DEV_MEMORY_TEMP Memory temperature (in C).
# TYPE DCGM_FI_DEV_MEMORY_TEMP gauge
DCGM_FI_DEV_MEMORY_TEMP{{{GPU0}}} 9223372036854775794
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{{GPU0}}} 87
DCGM_FI_DEV_GPU_UTIL{{{GPU1}}} 0
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{{{GPU0}}} 19537
DCGM_FI_DEV_FB_FREE{{{GPU1}}} 81037
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{{{GPU0}}} 61500
DCGM_FI_DEV_FB_USED{{{GPU1}}} 0
# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{GPU0}}} 0.852341
"""

# Newer builds: lowercase `hostname`; GPU 1 is time-sliced between two pods, each getting a
# copy of the same samples.
NODE_02_LABELS = (
    'UUID="GPU-11111111-2222-3333-4444-555555555555",pci_bus_id="00000000:01:00.0",'
    'device="nvidia{gpu}",modelName="NVIDIA L40S",hostname="gpu-node-02",'
    'DCGM_FI_DRIVER_VERSION="580.65.06"'
)
NODE_02 = "\n".join(
    [
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",{NODE_02_LABELS.format(gpu=0)}}} 12',
    ]
    + [
        f'{metric}{{gpu="1",{NODE_02_LABELS.format(gpu=1)},container="c",namespace="ns",'
        f'pod="{pod}"}} {value}'
        for pod in ("jupyter-bob", "jupyter-carol")
        for metric, value in (
            ("DCGM_FI_DEV_GPU_UTIL", 40),
            ("DCGM_FI_DEV_FB_USED", 1000),
            ("DCGM_FI_DEV_FB_FREE", 45000),
        )
    ]
)


def test_parse_multi_gpu_sample() -> None:
    metrics = parse_dcgm(NODE_01)
    assert list(metrics) == ["gpu-node-01"]
    assert metrics["gpu-node-01"] == {
        0: {
            "utilization": 87.0,
            "memory_used_mib": 61500.0,
            "memory_free_mib": 19537.0,
            "memory_total_mib": 81037.0,
            "uuid": "GPU-5d8f3c1e-0b6a-4e07-9c1f-2a7d9b3e4f10",
            "model": "NVIDIA A100-SXM4-80GB",
            "pods": [{"namespace": "jupyterhub", "pod": "jupyter-alice", "container": "notebook"}],
        },
        1: {
            "utilization": 0.0,
            "memory_used_mib": 0.0,
            "memory_free_mib": 81037.0,
            "memory_total_mib": 81037.0,
            "uuid": "GPU-8a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
            "model": "NVIDIA A100-SXM4-80GB",
            "pods": [],
        },
    }


def test_parse_lowercase_hostname_and_shared_gpu() -> None:
    metrics, skipped = parse_dcgm_counted(NODE_02)
    assert skipped == 0
    gpus = metrics["gpu-node-02"]
    assert gpus[0]["utilization"] == 12.0
    assert gpus[0]["memory_used_mib"] is None and gpus[0]["memory_total_mib"] is None
    assert gpus[1]["memory_total_mib"] == 46000.0  # copies per pod are not added up
    assert [pod["pod"] for pod in gpus[1]["pods"]] == ["jupyter-bob", "jupyter-carol"]
    assert gpus[1]["model"] == "NVIDIA L40S"


def test_parse_both_hostname_spellings_in_one_text() -> None:
    text = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="old-build"} 5\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",hostname="new-build"} 6\n'
    )
    assert {host: gpus[0]["utilization"] for host, gpus in parse_dcgm(text).items()} == {
        "old-build": 5.0,
        "new-build": 6.0,
    }


def test_parse_skips_malformed_lines() -> None:
    good = 'DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="n",pod="we\\"ird\\\\pod",namespace="x"} 50'
    text = "\n".join(
        [
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
            good,
            'DCGM_FI_DEV_GPU_UTIL{gpu="1",Hostname="n"} not-a-number',
            'DCGM_FI_DEV_GPU_UTIL{gpu="2",Hostname="n" 7',  # unterminated labels
            'DCGM_FI_DEV_GPU_UTIL{gpu="3",Hostname="n"} NaN',
            'DCGM_FI_DEV_FB_USED{gpu="0",Hostname="n"} 9223372036854775794',  # DCGM blank
            'DCGM_FI_DEV_FB_FREE{gpu="0",Hostname="n"} -1',
            'DCGM_FI_DEV_GPU_UTIL{gpu="x",Hostname="n"} 1',
            'DCGM_FI_DEV_GPU_UTIL{gpu="4"} 1',  # no hostname
            "DCGM_FI_DEV_GPU_UTIL",
            "complete garbage {{{",  # not a used metric: ignored, not counted
            'DCGM_FI_DEV_SM_CLOCK{gpu="0",Hostname="n"} oops',  # not a used metric: ignored
            "",
        ]
    )
    metrics, skipped = parse_dcgm_counted(text)
    assert skipped == 8
    assert list(metrics["n"]) == [0]
    gpu = metrics["n"][0]
    assert gpu["utilization"] == 50.0 and gpu["memory_used_mib"] is None
    assert gpu["pods"] == [{"namespace": "x", "pod": 'we"ird\\pod', "container": ""}]
    assert parse_dcgm("") == {} and parse_dcgm("\x00\xff garbage") == {}


def test_parse_mig_instances_add_up() -> None:
    base = 'gpu="0",Hostname="mig-node",modelName="NVIDIA H100 80GB HBM3",GPU_I_PROFILE="3g.40gb"'
    text = "\n".join(
        f'{metric}{{{base},GPU_I_ID="{instance}"}} {value}'
        for instance, used in (("1", 1000), ("2", 3000))
        for metric, value in (("DCGM_FI_DEV_FB_USED", used), ("DCGM_FI_DEV_FB_FREE", 39000))
    )
    gpu = parse_dcgm(text)["mig-node"][0]
    assert (gpu["memory_used_mib"], gpu["memory_free_mib"]) == (4000.0, 78000.0)


def test_each_pods_gpus_and_their_utilisation() -> None:
    """With Kubernetes mapping each GPU's samples name the pod using it: the idle-GPU loop
    reads a notebook server's GPUs from them. GPU_UTIL for a whole GPU; on MIG, where an
    instance has no GPU_UTIL, 100 x GR_ENGINE_ACTIVE of that instance."""
    _, _, pods = parse_dcgm_with_pods(NODE_01 + NODE_02)
    assert pods[("jupyterhub", "jupyter-alice")] == [
        {
            "key": "GPU-5d8f3c1e-0b6a-4e07-9c1f-2a7d9b3e4f10",
            "hostname": "gpu-node-01",
            "gpu": 0,
            "instance": "",
            "model": "NVIDIA A100-SXM4-80GB",
            "utilization": 87.0,
        }
    ]
    # a time-sliced GPU: each pod sees the GPU's utilisation
    assert [e["utilization"] for e in pods[("ns", "jupyter-bob")]] == [40.0]
    assert [e["utilization"] for e in pods[("ns", "jupyter-carol")]] == [40.0]
    assert len(pods) == 3  # GPUs no pod uses are nobody's
    base = 'gpu="0",UUID="GPU-h",Hostname="mig-node",modelName="NVIDIA H100 80GB HBM3"'
    mig = "\n".join(
        [
            f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{base},GPU_I_ID="1",namespace="hub",pod="jupyter-dan"}} 0.012',
            f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{base},GPU_I_ID="2",namespace="hub",pod="jupyter-eve"}} 0.93',
            f'DCGM_FI_DEV_FB_USED{{{base},GPU_I_ID="3",namespace="hub",pod="jupyter-fay"}} 10',
        ]
    )
    _, _, pods = parse_dcgm_with_pods(mig)
    assert [(e["key"], e["instance"], e["utilization"]) for e in pods[("hub", "jupyter-dan")]] == [
        ("GPU-h/1", "1", 1.2)
    ]
    assert pods[("hub", "jupyter-eve")][0]["utilization"] == 93.0
    # a pod whose samples carry no utilisation has its GPU, without data
    assert pods[("hub", "jupyter-fay")][0]["utilization"] is None


def test_metrics_for_node() -> None:
    merged = {"gpu-node-01": {0: {}}, "GPU-Node-02": {1: {}}, "gpu-3.example.internal": {2: {}}}
    assert metrics_for_node(merged, "gpu-node-01") == {0: {}}
    assert metrics_for_node(merged, "gpu-node-02") == {1: {}}
    assert metrics_for_node(merged, "gpu-3") == {2: {}}
    assert metrics_for_node({"gpu-3": {2: {}}}, "gpu-3.example.internal") == {2: {}}
    assert metrics_for_node(merged, "gpu-node-0") is None
    ambiguous = {"a.one.internal": {0: {}}, "a.two.internal": {1: {}}}
    assert metrics_for_node(ambiguous, "a") is None


# --- scraping against real HTTP servers -------------------------------------------------


class FakeExporter:
    """What one fake endpoint answers; tests change it between scrape rounds."""

    def __init__(self, body: str = "", status: int = 200) -> None:
        self.body, self.status = body, status
        self.release = asyncio.Event()  # a slow endpoint answers only once this is set
        self.slow = False


class MetricsHandler(RequestHandler):
    def initialize(self, exporter: FakeExporter) -> None:
        self.exporter = exporter

    async def get(self) -> None:
        if self.exporter.slow:
            await self.exporter.release.wait()
        self.set_status(self.exporter.status)
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(self.exporter.body)


@pytest.fixture
async def serve():
    servers: list[tuple[HTTPServer, FakeExporter]] = []

    def start(exporter: FakeExporter) -> str:
        sock, port = bind_unused_port()
        server = HTTPServer(Application([("/metrics", MetricsHandler, {"exporter": exporter})]))
        server.add_sockets([sock])
        servers.append((server, exporter))
        return f"http://127.0.0.1:{port}/metrics"

    yield start
    for server, exporter in servers:
        exporter.release.set()
        server.stop()
        await server.close_all_connections()


def closed_port_url() -> str:
    sock, port = bind_unused_port()
    sock.close()
    return f"http://127.0.0.1:{port}/metrics"


def _records(caplog: pytest.LogCaptureFixture, url: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and url in r.getMessage()]


async def test_scraper_statuses_merge_and_logging(serve, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="test.dcgm")
    ok_url = serve(FakeExporter(NODE_01))
    error_url = serve(FakeExporter("oops", status=500))
    flaky = FakeExporter("", status=503)
    flaky_url = serve(flaky)
    refused_url = closed_port_url()
    updates: list[dict] = []
    scraper = DcgmScraper(
        [ok_url, refused_url, error_url, flaky_url],
        interval_s=60,
        timeout_s=5,
        log=logging.getLogger("test.dcgm"),
        on_update=updates.append,
    )
    assert scraper.metrics_status()["status"] == "pending"

    for _ in range(3):
        await scraper.scrape_once()
        await asyncio.sleep(0.01)  # timestamps have millisecond resolution
    status = scraper.metrics_status()
    assert status["status"] == "partial"
    endpoints = status["endpoints"]
    assert endpoints[ok_url]["status"] == "ok" and "last_scrape" in endpoints[ok_url]
    assert endpoints[refused_url]["error"] == "connection refused"
    assert endpoints[error_url]["error"] == "HTTP 500"
    assert endpoints[flaky_url]["error"] == "HTTP 503"
    first_failure = endpoints[flaky_url]["since"]

    flaky.status = 200  # answers, but not with DCGM metrics: still unreachable, same streak
    await scraper.scrape_once()
    flaky_status = scraper.metrics_status()["endpoints"][flaky_url]
    assert flaky_status["since"] == first_failure
    assert flaky_status["error"].startswith("no DCGM GPU metrics")

    flaky.body = NODE_02  # recovers
    await scraper.scrape_once()
    await scraper.scrape_once()
    assert scraper.metrics_status()["endpoints"][flaky_url]["status"] == "ok"
    assert set(updates[-1]) == {"gpu-node-01", "gpu-node-02"} == set(scraper.metrics)
    assert len(updates) == 6
    assert metrics_for_node(updates[-1], "gpu-node-02")[1]["utilization"] == 40.0

    for url in (refused_url, error_url, flaky_url):
        assert len(_records(caplog, url, logging.WARNING)) == 1
    assert _records(caplog, flaky_url, logging.INFO) == [
        f"DCGM endpoint {flaky_url} is reachable again"
    ]
    assert _records(caplog, ok_url, logging.INFO) == [f"DCGM endpoint {ok_url} ok: 2 GPUs"]
    assert _records(caplog, ok_url, logging.WARNING) == []

    flaky.status = 500  # down again: a new streak with a new `since`, logged once more
    await scraper.scrape_once()
    assert scraper.metrics_status()["endpoints"][flaky_url]["since"] > first_failure
    assert len(_records(caplog, flaky_url, logging.WARNING)) == 2
    await scraper.stop()


async def test_all_unreachable_and_stale_data(serve) -> None:
    exporter = FakeExporter(NODE_01)
    url = serve(exporter)
    scraper = DcgmScraper([url], interval_s=60, timeout_s=5, stale_after_s=3600)
    await scraper.scrape_once()
    exporter.status = 500
    await scraper.scrape_once()
    status = scraper.metrics_status()
    assert status["status"] == "unreachable"
    assert status["since"] == status["endpoints"][url]["since"]
    assert status["endpoints"][url]["last_scrape"]
    assert "gpu-node-01" in scraper.metrics  # last good data kept while not stale

    scraper.stale_after_s = 0
    assert await scraper.scrape_once() == {}
    await scraper.stop()


async def test_timeout(serve) -> None:
    exporter = FakeExporter(NODE_01)
    exporter.slow = True
    url = serve(exporter)
    scraper = DcgmScraper([url], interval_s=60, timeout_s=0.2)
    await scraper.scrape_once()
    assert scraper.metrics_status()["endpoints"][url] == {
        "status": "unreachable",
        "since": scraper.metrics_status()["since"],
        "error": "timed out after 0.2s",
    }
    await scraper.stop()


async def test_loop_runs_survives_callback_errors_and_stops(serve, caplog) -> None:
    url = serve(FakeExporter(NODE_01))
    rounds = 0
    enough = asyncio.Event()

    async def on_update(metrics: dict) -> None:
        nonlocal rounds
        rounds += 1
        if rounds >= 3:
            enough.set()
        raise RuntimeError("consumer bug")

    scraper = DcgmScraper([url], interval_s=0.02, timeout_s=5, on_update=on_update)
    scraper.start()
    await asyncio.wait_for(enough.wait(), timeout=5)
    await scraper.stop()
    assert scraper._task is None and scraper._client is None
    assert sum("on_update callback failed" in r.getMessage() for r in caplog.records) == 1
    assert scraper.metrics_status()["status"] == "ok"


async def test_no_endpoints_is_off() -> None:
    scraper = DcgmScraper([])
    scraper.start()
    assert scraper.metrics_status() == {"status": "off"}
    assert await scraper.scrape_once() == {}
    await scraper.stop()
