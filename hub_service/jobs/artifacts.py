"""The artifacts API: what a job wrote into its THINKUBE_ARTIFACTS_DIR, listed and
downloaded.

- `GET api/v1/jobs/{id}/artifacts`: every regular file below the folder with its size,
  sha256 and modification time (hashes computed off the event loop, once per version of a
  file); 409 while the job is queued or running (its artifacts are complete once it ends;
  `?partial=true` lists what it has written so far, marked `complete: false`); 404 with the
  reason when it has none (it failed before writing any, never ran, or its backend keeps
  none).
- `GET|HEAD api/v1/jobs/{id}/artifacts/{path}`: one file, streamed in chunks, with an
  ETag, `Accept-Ranges: bytes` and one `Range` (`bytes=a-b`, `a-`, `-n`: 206, 416 when
  none of it is in the file; `If-Range` honoured), so that a broken download resumes.

Who may: as for every job route (handlers.py), the job's owner or a jobs admin; someone
else's job is answered as one that does not exist. Paths never leave the folder (see
artifact_files.py): `..`, absolute paths and NULs are refused (400) and links are never
followed (404).
"""

from __future__ import annotations

import asyncio
import os
from email.utils import formatdate
from pathlib import Path
from typing import Any

from tornado import iostream, web

from .artifact_files import (
    NOT_THERE,
    ArtifactPathError,
    HashCache,
    Listing,
    RangeNotSatisfiable,
    artifact_parts,
    content_disposition,
    etag_of,
    list_artifacts,
    open_artifact,
    open_folder,
    parse_range,
    range_applies,
)
from .handlers import JobsAPIHandler, _quoted
from .manager import ArtifactsUnavailable
from .store import QUEUED, RUNNING
from .views import iso

__all__ = ["HASHES", "ArtifactFileHandler", "ArtifactsHandler"]

CHUNK_BYTES = 256 * 1024
# One for the whole service: the folders are absolute paths, the keys name file versions.
HASHES = HashCache()
STILL_RUNNING = "is still running: its artifacts are complete once it ends"


def _partial(handler: web.RequestHandler) -> bool:
    return handler.get_query_argument("partial", "false").lower() in ("true", "1", "yes")


class ArtifactsAPIHandler(JobsAPIHandler):
    async def artifacts_folder(self, job_id: str) -> tuple[dict[str, Any], Path, bool]:
        """The job, where its artifacts are, and whether they are complete (it has ended);
        HTTPError 409 while it has not, 404 when it has none."""
        entry = await self.visible_entry(job_id)
        quoted = _quoted(job_id)
        if entry["status"] == QUEUED:
            raise web.HTTPError(
                409, f"job {quoted} has not started yet: its artifacts are complete once it ends"
            )
        running = entry["status"] == RUNNING
        if running and not _partial(self):
            raise web.HTTPError(
                409,
                f"job {quoted} {STILL_RUNNING} (partial=true gives what it has written so far)",
            )
        if entry.get("started_at") is None:
            raise web.HTTPError(404, f"job {quoted} never ran ({entry['status']}): no artifacts")
        backend = self.queue.backend
        try:
            folder = getattr(backend, "artifacts_dir", lambda _: None)(entry)
        except ArtifactsUnavailable as err:
            raise web.HTTPError(404, str(err)) from None
        if folder is None:
            raise web.HTTPError(404, f"jobs run by {backend.name} keep no artifacts")
        return entry, folder, not running

    def none_left(self, entry: dict[str, Any]) -> web.HTTPError:
        quoted = _quoted(entry["id"])
        if entry["status"] == RUNNING:
            return web.HTTPError(404, f"job {quoted} has written no artifacts yet")
        how = entry["status"]
        if entry.get("exit_code") is not None and entry["status"] != "completed":
            how += f", exit code {entry['exit_code']}"
        return web.HTTPError(
            404,
            f"job {quoted} ({how}) left no artifacts (a job keeps what it writes into the "
            "folder $THINKUBE_ARTIFACTS_DIR names)",
        )


class ArtifactsHandler(ArtifactsAPIHandler):
    """`GET api/v1/jobs/{id}/artifacts`."""

    async def get(self, job_id: str) -> None:
        entry, folder, complete = await self.artifacts_folder(job_id)
        try:
            listing: Listing = await asyncio.to_thread(list_artifacts, folder, HASHES)
        except OSError as err:
            if err.errno in NOT_THERE:
                raise self.none_left(entry) from None
            self.service.log.warning("artifacts of job %s: %s", job_id, err)
            raise web.HTTPError(
                503, f"the artifacts of job {_quoted(job_id)} cannot be read now ({err.strerror})"
            ) from None
        if not listing.files:
            raise self.none_left(entry)
        files = [
            {
                "path": f.path,
                "size": f.size,
                "sha256": f.sha256,
                "modified": iso(f.modified),
                "etag": f.etag,
            }
            for f in listing.files
        ]
        self.send_json(
            {
                "job": entry["id"],
                "status": entry["status"],
                "complete": complete,
                "count": len(files),
                "total_bytes": sum(f.size for f in listing.files),
                "truncated": listing.truncated,
                "skipped": listing.skipped,
                "files": files,
            }
        )


class ArtifactFileHandler(ArtifactsAPIHandler):
    """`GET|HEAD api/v1/jobs/{id}/artifacts/{path}`."""

    async def get(self, job_id: str, path: str) -> None:
        await self.send_artifact(job_id, path, with_body=True)

    async def head(self, job_id: str, path: str) -> None:
        await self.send_artifact(job_id, path, with_body=False)

    async def send_artifact(self, job_id: str, path: str, with_body: bool) -> None:
        entry, folder, _ = await self.artifacts_folder(job_id)
        try:
            parts = artifact_parts(path)
        except ArtifactPathError as err:
            self.send_bad_request("path", str(err))
            return
        try:
            fd, info = await asyncio.to_thread(_open, folder, parts)
        except OSError as err:
            if err.errno in NOT_THERE:
                raise web.HTTPError(
                    404, f"job {_quoted(job_id)} has no artifact {_quoted(path)}"
                ) from None
            self.service.log.warning("artifact of job %s: %s", job_id, err)
            raise web.HTTPError(
                503, f"the artifacts of job {_quoted(job_id)} cannot be read now ({err.strerror})"
            ) from None
        try:
            await self.send_open_file(fd, info, parts[-1], with_body)
        finally:
            await asyncio.to_thread(_close, fd)

    async def send_open_file(self, fd: int, info, name: str, with_body: bool) -> None:
        size = info.st_size
        etag = etag_of(info)
        last_modified = formatdate(info.st_mtime, usegmt=True)
        self.set_header("ETag", etag)
        self.set_header("Last-Modified", last_modified)
        self.set_header("Accept-Ranges", "bytes")
        # Never shown as a page of this service: a job's file is the person's data.
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
        self.set_header("Content-Disposition", content_disposition(name))
        self.set_header("Cache-Control", "private, no-cache")
        if self.request.headers.get("If-None-Match", "").strip() == etag:
            self.set_status(304)
            self.finish()
            return
        first, last = 0, size - 1
        wanted = None
        if range_applies(self.request.headers.get("If-Range"), etag, last_modified):
            try:
                wanted = parse_range(self.request.headers.get("Range"), size)
            except RangeNotSatisfiable:
                self.set_header("Content-Range", f"bytes */{size}")
                self.clear_header("Content-Disposition")
                self.send_json(
                    {
                        "status": 416,
                        "error": f"the range is outside the file ({size} bytes)",
                    },
                    416,
                )
                return
        if wanted is not None:
            first, last = wanted
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {first}-{last}/{size}")
        length = max(0, last - first + 1)
        self.set_header("Content-Length", length)
        if not with_body or length == 0:
            self.finish()
            return
        position = first
        try:
            while position <= last:
                chunk = await asyncio.to_thread(
                    _read, fd, min(CHUNK_BYTES, last - position + 1), position
                )
                if not chunk:  # cut short while sent: the client sees a short body
                    break
                position += len(chunk)
                self.write(chunk)
                await self.flush()
        except iostream.StreamClosedError:
            return  # the client left
        self.finish()


def _open(folder: Path, parts: tuple[str, ...]) -> tuple[int, Any]:
    folder_fd = open_folder(folder)
    try:
        return open_artifact(folder_fd, parts)
    finally:
        _close(folder_fd)


def _read(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)


def _close(fd: int) -> None:
    os.close(fd)
