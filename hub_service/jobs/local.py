"""Jobs as processes on this machine (single-machine mode).

Each job gets a folder of its own under the service's jobs folder: the script, what it
writes to stdout and to stderr (two files, kept apart), and its exit code, written when it
ends. The process runs in a session of its own, so that ending it ends everything it
started; it writes to files, not to the service, so it outlives a restart of the service,
which then follows it again by its process id (checked against its start time).

GPUs are given by UUID in `CUDA_VISIBLE_DEVICES`: the machine's free GPUs of the job's kind,
lowest index first, never one a notebook server or another job holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from .manager import Ending
from .spec import JobRequest

log = logging.getLogger("thinkube.jobs")

STREAMS = ("stdout", "stderr")
POLL_S = 0.1  # how often a followed log or a re-attached process is looked at


class LocalJobs:
    name = "local"

    def __init__(
        self,
        folder: Path,
        gpus_in_use: Callable[[], set[str]],
        machine: Callable[[], Mapping[str, Any] | None],
        ended: Callable[[str, Ending], Awaitable[None]],
        python: str = sys.executable,
        stop_grace_s: float = 5.0,
    ) -> None:
        self.folder = Path(folder)
        self.gpus_in_use = gpus_in_use  # UUIDs the hub's servers hold
        self.machine = machine  # this machine's node document
        self.ended = ended
        self.python = python
        self.stop_grace_s = stop_grace_s
        self.held: dict[str, list[str]] = {}  # job id -> GPU UUIDs
        self._watchers: dict[str, asyncio.Task] = {}

    def job_folder(self, entry_id: str) -> Path:
        return self.folder / entry_id

    def _pick_gpus(self, request: JobRequest) -> list[str]:
        if not request.gpus:
            return []
        machine = self.machine() or {}
        taken = self.gpus_in_use() | {u for held in self.held.values() for u in held}
        model = request.gpu_model
        free = [
            g["uuid"]
            for g in (machine.get("local") or {}).get("gpus") or []
            if g["uuid"] not in taken and (model is None or g["name"].replace(" ", "-") == model)
        ]
        if len(free) < request.gpus:
            raise RuntimeError(f"{request.gpus} GPU(s) asked for, {len(free)} free now")
        return free[: request.gpus]

    async def start(self, entry: Mapping[str, Any], request: JobRequest, node: str) -> dict:
        folder = self.job_folder(entry["id"])
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / (Path(request.script_name).name or "script.py")
        script.write_text(request.script)
        gpus = self._pick_gpus(request)
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": ",".join(gpus),
            "THINKUBE_JOB_ID": entry["id"],
            "THINKUBE_JOB_DIR": str(folder),
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"):
            env.pop(name, None)  # the service's own token is not the job's
        # The shell records the exit code where a restarted service finds it.
        command = (
            f"{shlex.quote(self.python)} {shlex.quote(str(script))} "
            f"> stdout.log 2> stderr.log; echo $? > exit_code"
        )
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=folder, env=env, start_new_session=True
        )
        self.held[entry["id"]] = gpus
        created = psutil.Process(process.pid).create_time()
        self._watchers[entry["id"]] = asyncio.create_task(self._wait(entry["id"], process))
        return {"backend": self.name, "pid": process.pid, "created": created, "gpus": gpus}

    async def _wait(self, entry_id: str, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        await self._report(entry_id)

    async def _report(self, entry_id: str) -> None:
        self.held.pop(entry_id, None)
        self._watchers.pop(entry_id, None)
        code = _exit_code(self.job_folder(entry_id))
        if code is None:
            await self.ended(entry_id, Ending(None, "Lost", "the job ended without an exit code"))
        elif code == 0:
            await self.ended(entry_id, Ending(0, "Completed"))
        else:
            await self.ended(entry_id, Ending(code, "Failed", f"exit code {code}"))

    async def reattach(self, entry: Mapping[str, Any]) -> bool:
        placement = entry.get("placement") or {}
        process = _same_process(placement)
        if process is None:
            if _exit_code(self.job_folder(entry["id"])) is not None:
                # It ended while the service was away: report that ending.
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.ensure_future(self._report(entry["id"]))
                )
                return True
            return False
        self.held[entry["id"]] = list(placement.get("gpus") or [])
        self._watchers[entry["id"]] = asyncio.create_task(self._follow(entry["id"], process))
        return True

    async def _follow(self, entry_id: str, process: psutil.Process) -> None:
        """Wait for a process that is not the service's child (it was started before a
        restart): Linux says when through a process file descriptor."""
        try:
            descriptor = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux, or it ended meanwhile
            await asyncio.to_thread(_wait_quietly, process)
        else:
            gone = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(descriptor, gone.set)
            try:
                await gone.wait()
            finally:
                loop.remove_reader(descriptor)
                os.close(descriptor)
        await self._report(entry_id)

    async def stop(self, entry: Mapping[str, Any], reason: str) -> None:
        placement = entry.get("placement") or {}
        watcher = self._watchers.pop(entry["id"], None)
        if watcher is not None:
            watcher.cancel()
        process = _same_process(placement)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            _, alive = await asyncio.to_thread(psutil.wait_procs, [process], self.stop_grace_s)
            if alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.held.pop(entry["id"], None)

    async def logs(
        self, entry: Mapping[str, Any], after: str | None, follow: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        """Lines of stdout and stderr as they are written, each with an id that says how
        many lines of each were sent (`"12.3"`): a resumed stream starts after it."""
        folder = self.job_folder(entry["id"])
        sent = _parse_position(after)  # lines of each stream the client already has
        read = [0, 0]  # lines of each stream read so far
        partial = {stream: "" for stream in STREAMS}
        offsets = {stream: 0 for stream in STREAMS}
        while True:
            done = _exit_code(folder) is not None or not follow
            for index, stream in enumerate(STREAMS):
                path = folder / f"{stream}.log"
                if not path.exists():
                    continue
                with path.open("rb") as handle:
                    handle.seek(offsets[stream])
                    chunk = handle.read()
                offsets[stream] += len(chunk)
                lines = (partial[stream] + chunk.decode("utf-8", "replace")).split("\n")
                partial[stream] = lines.pop()
                if done and partial[stream]:
                    lines.append(partial[stream])  # the last line, without its newline
                    partial[stream] = ""
                for line in lines:
                    read[index] += 1
                    if read[index] <= sent[index]:
                        continue
                    sent[index] = read[index]
                    yield f"{sent[0]}.{sent[1]}", stream, line
            if done:
                return
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        # Jobs keep running; only the service's watchers end.
        for watcher in list(self._watchers.values()):
            watcher.cancel()
        self._watchers.clear()


def _wait_quietly(process: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        process.wait()


def _parse_position(after: str | None) -> list[int]:
    try:
        out, err = (after or "0.0").split(".", 1)
        return [max(0, int(out)), max(0, int(err))]
    except ValueError:
        return [0, 0]


def _exit_code(folder: Path) -> int | None:
    try:
        return int((folder / "exit_code").read_text().strip())
    except (OSError, ValueError):
        return None


def _same_process(placement: Mapping[str, Any]) -> psutil.Process | None:
    """The job's process, if it still runs (the same one: its start time matches)."""
    pid, created = placement.get("pid"), placement.get("created")
    if not isinstance(pid, int):
        return None
    try:
        process = psutil.Process(pid)
        if created is not None and abs(process.create_time() - float(created)) > 0.5:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None
