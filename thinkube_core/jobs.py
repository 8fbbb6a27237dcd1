"""GPU jobs from Python: submit a script to the hub's queue, follow it, get its result.

In a notebook server of the hub, nothing needs configuring (the server's own token and the
service's address are in its environment)::

    from thinkube_core import jobs

    job = jobs.submit("train.py", gpus=1, expected_time="30m")
    print(job.position, job.eta)             # where it stands in the queue
    for line in job.logs(follow=True):       # its output, as it comes
        print(line)
    result = job.wait().result()             # {"status", "exit_code", "stdout", ...}

Elsewhere, give the service's address and a hub token: `jobs.Client(url, token)`, or the
environment variables `THINKUBE_JOBS_URL` and `THINKUBE_TOKEN` (or `JUPYTERHUB_API_TOKEN`).
Errors are `JobsError`, with the service's message.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Client", "Job", "JobsError", "submit"]

FINISHED = ("completed", "failed", "cancelled", "lost")


class JobsError(RuntimeError):
    """A request the service refused or could not answer; `field` names a bad option."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


SERVICE_PATH = "services/thinkube-resources/"


def _default_url() -> str:
    """THINKUBE_JOBS_URL; else the service under THINKUBE_HUB_URL (the hub's public
    address); else under the hub that started this notebook server."""
    url = os.environ.get("THINKUBE_JOBS_URL", "")
    if url:
        return url
    hub = os.environ.get("THINKUBE_HUB_URL", "")
    if hub:
        return hub.rstrip("/") + "/" + SERVICE_PATH
    api = os.environ.get("JUPYTERHUB_API_URL", "")
    if api.rstrip("/").endswith("/hub/api"):
        return api.rstrip("/")[: -len("hub/api")] + SERVICE_PATH
    raise JobsError(
        "Where is the hub? Set THINKUBE_HUB_URL (e.g. https://hub.example.org/) or "
        "THINKUBE_JOBS_URL, or pass url=."
    )


def _default_token() -> str:
    token = os.environ.get("THINKUBE_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise JobsError("No hub token: set THINKUBE_TOKEN (thinkube token create) or pass token=.")
    return token


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30):
        self.url = (url or _default_url()).rstrip("/") + "/"
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"token {token or _default_token()}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise JobsError(f"The service cannot be reached ({type(err).__name__}).") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            message = (
                body.get("error") or body.get("message") or response.reason_phrase
                if isinstance(body, dict)
                else response.reason_phrase
            )
            raise JobsError(str(message), response.status_code, body.get("field"))
        return response.json()

    def submit(
        self,
        script: str | Path,
        *,
        expected_time: str | float,
        gpus: int | None = None,
        gpu_model: str | None = None,
        where: str | None = None,
        pricing: str | None = None,
        cpu: str | float | None = None,
        memory: str | float | None = None,
        image: str | None = None,
        name: str | None = None,
        project: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Job:
        """Queue `script` (a path, or the script's text). `where`: `local` (this hub's
        nodes, the default), `runpod`, or a RunPod offer as the spawn form names it
        (`cloud:SECURE:NVIDIA GeForce RTX 4090:1`); `pricing`: `on-demand` or `spot` there."""
        path = Path(script) if not str(script).count("\n") else None
        if path is not None and path.is_file():
            text, script_name = path.read_text(), path.name
        else:
            text, script_name = str(script), "script.py"
        options = {
            "script": text,
            "script_name": script_name,
            "expected_time": expected_time,
            "gpus": gpus,
            "gpu_model": gpu_model,
            "where": where,
            "pricing": pricing,
            "cpu": cpu,
            "memory": memory,
            "image": image,
            "name": name,
            "project": project,
            "metadata": dict(metadata or {}),
        }
        body = {k: v for k, v in options.items() if v not in (None, "")}
        return Job(self, self._request("POST", "api/v1/jobs", json=body))

    def get(self, job_id: str) -> Job:
        return Job(self, self._request("GET", f"api/v1/jobs/{job_id}"))

    def list(self, **filters: str) -> list[Job]:
        """Your jobs, newest first; filters `status`, `project`, `user`, `metadata`."""
        page = self._request("GET", "api/v1/jobs", params={k: v for k, v in filters.items() if v})
        return [Job(self, item) for item in page["jobs"]]

    def queue(self) -> dict:
        """The waiting jobs in order (`jobs`), with positions and estimated starts."""
        return self._request("GET", "api/v1/queue")

    def nodes(self) -> list[dict]:
        return self._request("GET", "api/v1/nodes")["nodes"]


class Job:
    """A job as the service last described it; `refresh()` asks again."""

    def __init__(self, client: Client, view: Mapping[str, Any]):
        self.client = client
        self.view = dict(view)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.view[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"<Job {self.view.get('id')} {self.view.get('status')}>"

    @property
    def finished(self) -> bool:
        return self.view.get("status") in FINISHED

    def refresh(self) -> Job:
        self.view = self.client._request("GET", f"api/v1/jobs/{self.view['id']}")
        return self

    def cancel(self) -> Job:
        self.view = self.client._request("POST", f"api/v1/jobs/{self.view['id']}/cancel")
        return self

    def result(self) -> dict:
        return self.client._request("GET", f"api/v1/jobs/{self.view['id']}/result")

    def logs(self, follow: bool = False) -> Iterator[str]:
        """Its output lines; with `follow`, as they come until it ends (a dropped stream
        is resumed where it stopped)."""
        for _, text in self.output(follow):
            yield text

    def output(self, follow: bool = False) -> Iterator[tuple[str, str]]:
        """(stream, line) pairs: `stdout`, `stderr` (or `combined` where the two cannot be
        told apart), then, when following, `status` lines while it waits in the queue."""
        path = f"api/v1/jobs/{self.view['id']}/logs"
        if not follow:
            response = self.client._http.get(path, params={"follow": "false"})
            if response.status_code >= 400:
                raise JobsError(_error_of(response), response.status_code)
            for line in response.text.splitlines():
                yield "stdout", line
            return
        last: str | None = None
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = last
            try:
                with self.client._http.stream("GET", path, headers=headers, timeout=None) as stream:
                    if stream.status_code >= 400:
                        stream.read()
                        raise JobsError(_error_of(stream), stream.status_code)
                    for event_id, name, data in _events(stream.iter_lines()):
                        last = event_id or last
                        if name == "end":
                            return
                        if name == "status":
                            where = json.loads(data)
                            yield "status", f"queued, position {where.get('position') or '?'}"
                        else:
                            yield name, data
                return
            except httpx.HTTPError:
                time.sleep(1)  # dropped: resume after the last line received

    def wait(self, poll_s: float = 2.0, progress: bool = True) -> Job:
        """Until it ends; with `progress`, where it stands is shown as it changes."""
        shown = None
        while not self.refresh().finished:
            now = (self.view.get("status"), self.view.get("position"))
            if progress and now != shown:
                where = f" (position {now[1]})" if now[1] else ""
                print(f"{self.view['id']}: {now[0]}{where}", file=sys.stderr)
                shown = now
            time.sleep(poll_s)
        return self


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.reason_phrase)
    except ValueError:
        return response.reason_phrase


def _events(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """Server-Sent Events: (id, event name, data) per event; comments skipped."""
    event_id, name, data = None, "message", []
    for line in lines:
        if line == "":
            if data:
                yield event_id, name, "\n".join(data)
            event_id, name, data = None, "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])


def submit(script: str | Path, **options: Any) -> Job:
    """Queue a script with a client made from the environment (see the module)."""
    return Client().submit(script, **options)
