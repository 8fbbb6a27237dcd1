"""GPU jobs from Python: submit a script to the hub's queue, follow it, get its result.

In a notebook server of the hub, nothing needs configuring (the server's own token and the
service's address are in its environment)::

    from thinkube_core import jobs

    job = jobs.submit("train.py", gpus=1, expected_time="30m")
    print(job.position, job.eta)             # where it stands in the queue
    for line in job.logs(follow=True):       # its output, as it comes
        print(line)
    result = job.wait().result()             # {"status", "exit_code", "stdout", ...}
    for fetched in job.download("out/"):     # what it wrote to $THINKUBE_ARTIFACTS_DIR
        print(fetched.how, fetched.path)

A fine-tuning job (docs/jobs.md, Fine-tuning) from a config file or a dict, with a dataset
file sent along or one on the shared datasets volume::

    preview = jobs.train("lora.yaml", dataset="chats.jsonl", gpus=1, expected_time="1h",
                         dry_run=True)
    print(preview["where"]["summary"], preview["cost"])   # nothing queued
    job = jobs.train("lora.yaml", dataset="chats.jsonl", gpus=1, expected_time="1h")

Elsewhere, give the service's address and a hub token: `jobs.Client(url, token)`, or the
environment variables `THINKUBE_JOBS_URL` and `THINKUBE_TOKEN` (or `JUPYTERHUB_API_TOKEN`).
Errors are `JobsError`, with the service's message.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["Client", "Fetched", "Job", "JobsError", "submit", "train"]

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

    def train(
        self,
        config: str | Path | Mapping[str, Any],
        *,
        expected_time: str | float,
        dataset: str | Path | None = None,
        gpus: int = 0,
        gpu_model: str | None = None,
        cpu: str | float | None = None,
        memory: str | float | None = None,
        image: str | None = None,
        metadata: Mapping[str, str] | None = None,
        where: str | None = None,
        pricing: str | None = None,
        dry_run: bool = False,
    ) -> Job | dict:
        """Queue a fine-tuning job: `config` is a YAML or JSON file, its text, or a dict;
        `dataset` a JSON Lines (or JSON) file sent with it (else the config's dataset.path
        on the shared volume). `where="cloud:<offer key>"` with `pricing` asks about a cloud
        offer. With `dry_run`, nothing is queued: the answer (a dict) says where it would run
        now and, on a cloud offer, the most it may cost."""
        if isinstance(config, Mapping):
            config_text = json.dumps(dict(config))
        elif isinstance(config, Path) or ("\n" not in str(config) and Path(str(config)).is_file()):
            config_text = Path(config).read_text()
        else:
            config_text = str(config)
        options = {
            "expected_time": expected_time,
            "gpus": gpus,
            "gpu_model": gpu_model,
            "cpu": cpu,
            "memory": memory,
            "image": image,
            "where": where,
            "pricing": pricing,
            "metadata": json.dumps(dict(metadata)) if metadata else None,
        }
        fields = {k: str(v) for k, v in options.items() if v not in (None, "")}
        files: dict[str, tuple[str, bytes, str]] = {
            "config": ("config.yaml", config_text.encode("utf-8"), "application/yaml")
        }
        if dataset is not None:
            data_path = Path(dataset)
            try:
                data = data_path.read_bytes()
            except OSError as err:
                raise JobsError(
                    f"The dataset {data_path} cannot be read: {err.strerror}."
                ) from None
            files["dataset"] = (data_path.name, data, "application/octet-stream")
        answer = self._request(
            "POST",
            "api/v1/training-jobs",
            params={"dry_run": "1"} if dry_run else None,
            data=fields,
            files=files,
        )
        return answer if dry_run else Job(self, answer)

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

    def artifacts(self, partial: bool = False) -> list[dict]:
        """What it wrote to $THINKUBE_ARTIFACTS_DIR, once it has ended: one dict per file
        (`path`, `size`, `sha256`, `modified`, `etag`). With `partial`, what a running job
        has written so far."""
        params = {"partial": "true"} if partial else None
        listing = self.client._request(
            "GET", f"api/v1/jobs/{self.view['id']}/artifacts", params=params
        )
        return listing["files"]

    def download(
        self, directory: str | Path, on_file: Callable[[Fetched], None] | None = None
    ) -> list[Fetched]:
        """Every artifact into `directory` (made if needed), at its path there, each
        checked against its sha256: a file already there whole is kept, a partial one (an
        earlier download cut short) is resumed where it stops. `on_file` is told of each
        file as it is done."""
        directory = Path(directory)
        done = []
        for item in self.artifacts():
            try:
                fetched = self._fetch(item, directory)
            except OSError as err:  # on this side: a folder in the way, a full disk
                raise JobsError(f"{item['path']}: {err.strerror} ({err.filename})") from None
            done.append(fetched)
            if on_file is not None:
                on_file(fetched)
        return done

    def _fetch(self, item: Mapping[str, Any], directory: Path) -> Fetched:
        name, size = item["path"], int(item["size"])
        target = local_path(directory, name)
        have = target.stat().st_size if target.is_file() else 0
        if target.is_file() and have == size and _sha256(target) == item["sha256"]:
            return Fetched(name, target, size, "present")
        if have >= size:
            have = 0  # longer, or as long but not the same: fetched again whole
        how = "resumed" if have else "fetched"
        self._get_file(name, target, have, item.get("etag"))
        digest = _sha256(target)
        if digest != item["sha256"] and how == "resumed":
            how = "fetched"  # what was there did not belong to it: once more, whole
            self._get_file(name, target, 0, None)
            digest = _sha256(target)
        if digest != item["sha256"]:
            raise JobsError(
                f"{name}: the downloaded file's sha256 is not the listed one (did the job's "
                "artifacts change? list them again)"
            )
        return Fetched(name, target, size, how)

    def _get_file(self, name: str, target: Path, start: int, etag: str | None) -> None:
        """Write the artifact `name` into `target`, from byte `start` on when the service
        still has the version `etag` (else the whole file)."""
        path = f"api/v1/jobs/{self.view['id']}/artifacts/{quote(name, safe='/')}"
        headers = {}
        if start:
            headers["Range"] = f"bytes={start}-"
            if etag:
                headers["If-Range"] = etag
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.client._http.stream("GET", path, headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise JobsError(f"{name}: {_error_of(response)}", response.status_code)
                resumed = response.status_code == 206
                if resumed and not response.headers.get("content-range", "").startswith(
                    f"bytes {start}-"
                ):
                    raise JobsError(f"{name}: the service sent another part than asked for")
                with target.open("ab" if resumed else "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as err:
            raise JobsError(
                f"{name}: the download broke off ({type(err).__name__}); run it again to resume"
            ) from None

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


@dataclass(frozen=True)
class Fetched:
    """One artifact after `Job.download`: `how` is fetched, resumed, or present (already
    there, whole)."""

    name: str  # its path among the job's artifacts
    path: Path  # where it is now
    size: int
    how: str


def local_path(directory: Path, name: str) -> Path:
    """Where the artifact `name` goes below `directory`; JobsError for a name that would
    land anywhere else (absolute, `..`, empty steps), whatever the service listed."""
    parts = name.split("/")
    bad = [p for p in parts if p in ("", ".", "..") or "\x00" in p]
    if os.sep != "/":  # Windows: a backslash or a drive would be a way out too
        bad += [p for p in parts if "\\" in p or ":" in p]
    if not name or bad:
        raise JobsError(f"the service listed an artifact path that is not safe here: {name!r}")
    return directory.joinpath(*parts)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def train(config: str | Path | Mapping[str, Any], **options: Any) -> Job | dict:
    """Queue a fine-tuning job (or, with dry_run=True, ask where it would run) with a
    client made from the environment (see the module and Client.train)."""
    return Client().train(config, **options)
