"""A DCGM exporter stand-in: a real HTTP server answering `/metrics` with Prometheus text in
dcgm-exporter's shape, from values the test sets and changes while it runs (GPU utilisation,
the pod each GPU is mapped to as `--kubernetes` mapping labels it, MIG instances), or with an
error. An independent oracle: it imports nothing of the product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

__all__ = ["DcgmExporter", "ExporterGpu"]


@dataclass
class ExporterGpu:
    hostname: str
    index: int
    uuid: str
    model: str = "NVIDIA A100-SXM4-80GB"
    utilization: float | None = 0.0  # None: this GPU's utilisation series is not served
    namespace: str = ""
    pod: str = ""  # the pod using it (Kubernetes mapping); "" for none
    container: str = "notebook"

    def labels(self) -> str:
        labels = (
            f'gpu="{self.index}",UUID="{self.uuid}",device="nvidia{self.index}",'
            f'modelName="{self.model}",Hostname="{self.hostname}"'
        )
        if self.pod:
            labels += f',container="{self.container}",namespace="{self.namespace}",pod="{self.pod}"'
        return labels


@dataclass
class DcgmExporter:
    gpus: list[ExporterGpu] = field(default_factory=list)
    status: int = 200  # anything else: answered with that status and no metrics
    scrapes: int = 0
    url: str = ""
    _server: HTTPServer | None = None

    def text(self) -> str:
        lines = [
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        ]
        lines += [
            f"DCGM_FI_DEV_GPU_UTIL{{{gpu.labels()}}} {gpu.utilization:g}"
            for gpu in self.gpus
            if gpu.utilization is not None
        ]
        lines += [
            "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).",
            "# TYPE DCGM_FI_DEV_FB_USED gauge",
        ]
        lines += [f"DCGM_FI_DEV_FB_USED{{{gpu.labels()}}} 1024" for gpu in self.gpus]
        return "\n".join(lines) + "\n"

    def gpu(self, uuid: str) -> ExporterGpu:
        return next(gpu for gpu in self.gpus if gpu.uuid == uuid)

    def start(self) -> str:
        exporter = self

        class Metrics(RequestHandler):
            def get(self) -> None:
                exporter.scrapes += 1
                if exporter.status != 200:
                    self.set_status(exporter.status)
                    self.finish("exporter unavailable\n")
                    return
                self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.finish(exporter.text())

        sock, port = bind_unused_port()
        self._server = HTTPServer(Application([("/metrics", Metrics)]))
        self._server.add_sockets([sock])
        self.url = f"http://127.0.0.1:{port}/metrics"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
