"""The routes a RunPod job's pod reports back on (for the job itself, not for people):

- `PUT api/v1/jobs/{id}/upload/artifacts/{path}`: one file of what the job produced, the
  body its bytes (streamed to disk, never held whole), `X-Content-SHA256` its hash when
  sent; kept as `<jobs_runpod_artifacts_folder>/<id>/<path>`. 201 `{path, size, sha256}`;
  sending the same path again replaces it (a retried upload).
- `POST api/v1/jobs/{id}/upload/result`: `{"exit_code": 0, "reason": "Completed",
  "message": ""}`; the service then terminates the pod and ends the job with it. 200.

Both take only the job's own upload token (`Authorization: Bearer <token>`), made for the
job when its pod was rented, sent in the pod's environment and kept by the service only as a
hash: compared in constant time, valid while the job runs and until its deadline plus the
time it has to report. No token is 401; a wrong token, another job's, or a job that has
ended or is not on RunPod is 403, the same for all; nothing is written either way. A path that would leave
the job's folder is refused (400). These routes take no hub token and grant nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

from jupyterhub.utils import url_path_join
from tornado import web

from ..bodies import BodyError, check_json_media_type, parse_json_body
from ..handlers import JSONHandler
from .runpod import token_hash

__all__ = ["ArtifactPathError", "artifact_path", "check_result", "upload_routes"]

MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 255
MAX_DEPTH = 32
RESULT_BODY_BYTES = 16 * 1024
MAX_MESSAGE_CHARS = 2000
REASONS = ("Completed", "Failed", "DeadlineExceeded")
PARTIAL = ".partial"  # in the artifacts folder, beside the jobs' folders
FORBIDDEN = "this upload is not allowed: the token is not this job's, or the job has ended"


class ArtifactPathError(ValueError):
    """A path an artifact may not be stored at; the message says why."""


def artifact_path(text: str) -> PurePosixPath:
    """A relative path inside a job's folder, from what the upload route was given: parts
    separated by `/`, none empty, `.` or `..`, no control characters or backslashes, not
    absolute, within the length and depth limits. ArtifactPathError otherwise. Pure."""
    if not text or len(text) > MAX_PATH_CHARS:
        raise ArtifactPathError(f"an artifact's path must be 1 to {MAX_PATH_CHARS} characters")
    if text.startswith("/"):
        raise ArtifactPathError("an artifact's path must be relative to the job's folder")
    if "\\" in text or any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in text):
        raise ArtifactPathError(
            "an artifact's path must not hold backslashes or control characters"
        )
    parts = text.split("/")
    if len(parts) > MAX_DEPTH:
        raise ArtifactPathError(f"an artifact's path may be at most {MAX_DEPTH} folders deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise ArtifactPathError(
                "an artifact's path must stay inside the job's folder (no empty, '.' or '..' parts)"
            )
        if len(part) > MAX_PART_CHARS:
            raise ArtifactPathError(
                f"each part of an artifact's path is at most {MAX_PART_CHARS} characters"
            )
    return PurePosixPath(*parts)


def check_result(document: Any) -> dict[str, Any]:
    """The pod's result, checked: `exit_code` (a whole number), `reason` (optional:
    Completed, Failed or DeadlineExceeded), `message` (optional text). BodyError names what
    is wrong. Pure."""
    if not isinstance(document, dict):
        raise BodyError(400, None, "the result must be a JSON object")
    unknown = sorted(set(document) - {"exit_code", "reason", "message"})
    if unknown:
        raise BodyError(400, str(unknown[0])[:40], "is not a field of a result")
    code = document.get("exit_code")
    if isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31:
        raise BodyError(400, "exit_code", "must be a whole number (the script's exit code)")
    reason = document.get("reason")
    if reason is not None and reason not in REASONS:
        raise BodyError(400, "reason", f"must be one of {', '.join(REASONS)}")
    message = document.get("message")
    if message is not None and (not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS):
        raise BodyError(400, "message", f"must be text of at most {MAX_MESSAGE_CHARS} characters")
    if reason is None or (reason != "DeadlineExceeded" and reason != _by_code(code)):
        reason = _by_code(code)  # the exit code says how it ended
    return {"exit_code": code, "reason": reason, "message": message or ""}


def _by_code(code: int) -> str:
    return "Completed" if code == 0 else "Failed"


class JobUploadHandler(JSONHandler):
    """What both routes share: the job, its RunPod backend and the token check, before any
    of the body is read."""

    public = True  # no hub token: the job's own token, checked in admit
    entry: dict[str, Any]

    @property
    def runpod(self):
        return getattr(self.service.jobs.backend, "runpod", None)

    async def admit(self) -> None:
        if self.request.method not in self.allowed_methods():
            raise self.method_not_allowed()
        queue = self.service.jobs
        if queue is None:
            if not self.service.jobs_enabled:
                raise web.HTTPError(404, "jobs are not enabled on this hub")
            self.set_header("Retry-After", "5")
            raise web.HTTPError(503, "the service is starting; send it again in a moment")
        job_id = self.path_args[0] if self.path_args else ""
        token = _bearer(self.request.headers.get("Authorization", ""))
        if not token:
            raise web.HTTPError(
                401, "this route takes the job's own upload token (Authorization: Bearer ...)"
            )
        entry = await queue.db(queue.store.get, job_id) if 0 < len(job_id) <= 64 else None
        runpod = self.runpod
        if entry is None or runpod is None or not runpod.accepts_token(entry, token):
            # a decoy comparison, so that an unknown job takes as long as a wrong token
            secrets.compare_digest(token_hash(token), "0" * 64)
            raise web.HTTPError(403, FORBIDDEN)
        self.entry = entry
        self.limit_body()  # the declared size, once the job is known

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:
            self.set_header("WWW-Authenticate", "Bearer")
        super().write_error(status_code, **kwargs)


def _bearer(header: str) -> str:
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() in ("bearer", "token") else ""


@web.stream_request_body
class ArtifactUploadHandler(JobUploadHandler):
    """`PUT api/v1/jobs/{id}/upload/artifacts/{path}`."""

    _sink = None
    _partial: Path | None = None
    _received = 0

    @property
    def max_body_bytes(self) -> int:  # type: ignore[override]
        runpod = self.runpod if self.service.jobs is not None else None
        return runpod.settings.max_artifact_bytes if runpod is not None else 0

    async def admit(self) -> None:
        await super().admit()
        try:
            self.relative = artifact_path(self.path_args[1])
        except ArtifactPathError as err:
            raise web.HTTPError(400, str(err)) from None
        runpod = self.runpod
        self.folder = runpod.artifacts_root(self.entry["id"])
        held = _size_of(self.folder) - _size_of_file(self.folder / self.relative)
        self.room = runpod.settings.max_artifact_bytes - held
        if self._declared_length() > self.room:
            raise web.HTTPError(
                413,
                f"the job's artifacts may take at most {runpod.settings.max_artifact_bytes} "
                f"bytes; {max(0, self.room)} are left",
            )
        target = self.folder / self.relative
        for parent in [self.folder, *reversed(target.parents)]:
            if parent == self.folder or self.folder in parent.parents:
                if parent.exists() and (parent.is_symlink() or not parent.is_dir()):
                    raise web.HTTPError(
                        409, f"{parent.relative_to(self.folder)} is a file, not a folder"
                    )
        if target.is_dir():
            raise web.HTTPError(409, f"{self.relative} is a folder")
        partial = runpod.settings.artifacts_folder / PARTIAL
        partial.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._partial = partial / f"{self.entry['id']}-{secrets.token_hex(8)}"
        self._sink = await asyncio.to_thread(self._partial.open, "xb")  # closed in put or on_finish
        self._digest = hashlib.sha256()

    def data_received(self, chunk: bytes) -> None:
        if self._sink is None or self._refusal is not None or self._finished:
            super().data_received(chunk)  # refused: dropped as it comes
            return
        self._received += len(chunk)
        if self._received > self.room:
            self._discard()
            self.refuse(web.HTTPError(413, "the job's artifacts would take more than allowed"))
            return
        self._sink.write(chunk)
        self._digest.update(chunk)

    def _discard(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)
            self._partial = None

    def put(self, job_id: str, path: str) -> None:
        assert self._sink is not None and self._partial is not None
        self._sink.close()
        self._sink = None
        digest = self._digest.hexdigest()
        sent = self.request.headers.get("X-Content-SHA256", "").strip().lower()
        if sent and not secrets.compare_digest(sent.encode("utf-8", "replace"), digest.encode()):
            self._discard()
            self.send_bad_request(
                None, "the file arrived damaged (its SHA-256 differs): send it again"
            )
            return
        target = self.folder / self.relative
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.replace(self._partial, target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            self._discard()
            raise web.HTTPError(
                409, f"{self.relative} clashes with a file or folder already sent"
            ) from None
        self._partial = None
        self.service.log.info(
            "job %s: artifact %s received (%d bytes)", job_id, self.relative, self._received
        )
        self.send_json({"path": str(self.relative), "size": self._received, "sha256": digest}, 201)

    def on_finish(self) -> None:
        self._discard()
        super().on_finish()

    def on_connection_close(self) -> None:
        self._discard()
        super().on_connection_close()


@web.stream_request_body
class ResultUploadHandler(JobUploadHandler):
    """`POST api/v1/jobs/{id}/upload/result`."""

    max_body_bytes = RESULT_BODY_BYTES

    async def admit(self) -> None:
        await super().admit()
        try:
            check_json_media_type(self.request.headers.get("Content-Type"))
        except BodyError as err:
            raise web.HTTPError(err.status, str(err)) from None

    async def post(self, job_id: str) -> None:
        try:
            result = check_result(parse_json_body(self.body, self.request.headers["Content-Type"]))
        except BodyError as err:
            self.send_bad_request(err.field, err.message, err.status)
            return
        await self.runpod.accept_result(self.entry, result)
        self.service.log.info(
            "job %s: its pod reported exit code %s (%s)",
            job_id,
            result["exit_code"],
            result["reason"],
        )
        self.send_json({"status": "accepted", **result})


def _size_of(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            total += _size_of_file(Path(root) / name)
    return total


def _size_of_file(path: Path) -> int:
    try:
        return path.lstat().st_size if path.is_file() else 0
    except OSError:
        return 0


def upload_routes(prefix: str) -> list[tuple]:
    api = url_path_join(prefix, "api/v1")
    return [
        (url_path_join(api, r"jobs/([^/]+)/upload/artifacts/(.+)"), ArtifactUploadHandler),
        (url_path_join(api, r"jobs/([^/]+)/upload/result"), ResultUploadHandler),
    ]
