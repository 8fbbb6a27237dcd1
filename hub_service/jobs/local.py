"""Jobs as processes on this machine (single-machine mode).

Each job gets a folder of its own under the service's jobs folder: the script, what it
writes to stdout and to stderr (two files, kept apart), and its exit code, written when it
ends. The process runs in a session of its own, so that ending it ends everything it
started; it writes to files, not to the service, so it outlives a restart of the service,
which then follows it again by its process id (checked against its start time).

A job runs as a notebook server does (ThinkubeLocalSpawner):

- its cores and GPUs are picked and claimed in one step in the claims folder the service
  shares with the hub (thinkube_core/device_claims.py), so a job never gets a GPU or core
  a notebook server or another job holds; released when it ends, is stopped or is lost;
- pinned to its cores (CPU affinity); its GPUs given by UUID in `CUDA_VISIBLE_DEVICES`, the
  machine's other GPUs also hidden from NVML (thinkube_core/gpu_isolation.py);
- never as root: a service running as root runs each job as the person's own account (the
  same account their servers get, thinkube_core/accounts.py, made on first use), switched
  to by run_as after the isolation step; a service not running as root runs jobs as its own
  user. The job's folder stays the service's: the script reaches the job on its standard
  input (its name kept for tracebacks), and its output goes to files the service opened.
  The job starts in the account's home, with a small environment (none of the service's
  secrets).

What a job produces goes into the folder named by THINKUBE_ARTIFACTS_DIR, kept after it
ends and served by the artifacts API: `<jobs folder>/<id>/artifacts` when the job runs as
the service's own user (made before it starts); `<home>/thinkube-jobs/<id>` in the
account's home when it runs as a person's account (the service's folders are closed to
other accounts, a home is the account's own; the job makes it, as the account, before the
script runs), where the person's notebook servers see it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pwd
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from thinkube_core.accounts import DEFAULT_PREFIX, AccountError, closed_to_others, person_account
from thinkube_core.device_claims import Claim, DeviceClaims, pick_cores, pick_gpus
from thinkube_core.gpu_isolation import DEV_DIR, ISOLATION_MODES, NVIDIA_PROC_DIR, isolated

from .manager import ArtifactsUnavailable, Ending
from .spec import JobRequest

log = logging.getLogger("thinkube.jobs")

STREAMS = ("stdout", "stderr")
ARTIFACTS_FOLDER = "artifacts"  # in the job's folder, for jobs run as the service's user
HOME_ARTIFACTS_FOLDER = "thinkube-jobs"  # in the account's home, for jobs run as a person
POLL_S = 0.1  # how often a followed log or a re-attached process is looked at

# Of the service's environment, only what a program needs to run: none of its secrets.
KEPT_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "TZ")

# Makes the artifacts folder (as the account the job runs as), then runs the script read
# from standard input as __main__, under the script's own name (so a traceback names it and
# shows its lines), with that name as sys.argv[0].
SCRIPT_RUNNER = """\
import linecache, os, sys, types
try:
    os.makedirs(os.environ["THINKUBE_ARTIFACTS_DIR"], mode=0o700, exist_ok=True)
except (KeyError, OSError) as err:
    print(f"thinkube: no artifacts folder: {err}", file=sys.stderr)
name = sys.argv[1]
source = sys.stdin.buffer.read()
linecache.cache[name] = (len(source), None, source.decode("utf-8", "replace").splitlines(True), name)
sys.argv = [name]
main = types.ModuleType("__main__")
sys.modules["__main__"] = main
exec(compile(source, name, "exec"), main.__dict__)
"""


@dataclass(frozen=True)
class LocalJobSettings:
    """How jobs run here: the same choices ThinkubeLocalSpawner's settings of the same names
    make for servers (give both the same values)."""

    system_users: bool = False  # as root: the existing system user of the person's name
    account_prefix: str = DEFAULT_PREFIX  # as root: otherwise the account <prefix><name>
    account_home_root: str = "/home"  # where the accounts made for people get their homes
    gpu_isolation: str = "auto"  # auto | required | off
    nvidia_proc_dir: str = NVIDIA_PROC_DIR
    nvidia_dev_dir: str = DEV_DIR

    def __post_init__(self) -> None:
        if self.gpu_isolation not in ISOLATION_MODES:
            raise ValueError(
                f"gpu_isolation {self.gpu_isolation!r}: one of {', '.join(ISOLATION_MODES)}"
            )


class JobStartError(RuntimeError):
    """A job could not start; the message says why in plain words."""

    busy = False  # True: what it needs was taken a moment ago; it waits for the next plan


class DevicesTaken(JobStartError):
    """A server took the cores or GPUs between the plan and the start."""

    busy = True


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
        claims: DeviceClaims | None = None,
        settings: LocalJobSettings = LocalJobSettings(),
    ) -> None:
        self.folder = Path(folder)
        self.gpus_in_use = gpus_in_use  # UUIDs known taken besides the claims (may be none)
        self.machine = machine  # this machine's node document
        self.ended = ended
        self.python = python
        self.stop_grace_s = stop_grace_s
        # Default: $THINKUBE_CLAIMS_DIR, which the hub sets in the service's environment.
        self.claims = claims if claims is not None else DeviceClaims()
        self.settings = settings
        self._watchers: dict[str, asyncio.Task] = {}

    def job_folder(self, entry_id: str) -> Path:
        return self.folder / entry_id

    def _choose(self, request: JobRequest) -> Callable[[set[int], set[str]], tuple]:
        """What the job gets, given what the claims hold: ceil(cpu) cores (highest first),
        `gpus` GPUs of its model (lowest index first); raises JobStartError when there are
        not enough free."""

        def choose(claimed_cores: set[int], claimed_gpus: set[str]):
            local = (self.machine() or {}).get("local") or {}
            taken_cores = claimed_cores | set(local.get("cores_taken") or [])
            taken_gpus = (
                claimed_gpus
                | set(self.gpus_in_use())
                | {g["uuid"] for g in local.get("gpus") or [] if g.get("taken")}
            )
            wanted = max(1, math.ceil(request.cpu))
            cores = pick_cores(local.get("cores") or [], taken_cores, wanted)
            if cores is None:
                free = len(set(local.get("cores") or []) - taken_cores)
                raise DevicesTaken(f"{wanted} CPU core(s) asked for, {free} free now")
            model = request.gpu_model
            gpus = pick_gpus(
                local.get("gpus") or [],
                taken_gpus,
                request.gpus,
                lambda g: model is None or g["name"].replace(" ", "-") == model,
            )
            if gpus is None:
                raise DevicesTaken(f"{request.gpus} GPU(s) asked for, fewer free now")
            return cores, gpus, request.memory

        return choose

    async def account(self, user: str) -> pwd.struct_passwd | None:
        """Whom the job runs as: the person's account when the service is root (made on
        first use, as for their servers); None (the service's own user) otherwise."""
        if os.geteuid() != 0:
            if self.settings.system_users:
                raise JobStartError("system_users needs the service to run as root")
            return None
        try:
            account, made = await person_account(
                user,
                self.settings.system_users,
                self.settings.account_prefix,
                self.settings.account_home_root,
            )
        except AccountError as err:
            raise JobStartError(f"no account to run the job as: {err}") from None
        if made:
            log.info("made the system account %s for %s", account.pw_name, user)
        closed = closed_to_others(self.python)
        if closed:
            raise JobStartError(f"{account.pw_name} cannot run {self.python}: {closed}")
        return account

    def command(
        self, script: Path, account: pwd.struct_passwd | None, gpus: tuple[str, ...]
    ) -> list[str]:
        """The job's command: [GPU isolation] sh -c '[run_as ACCOUNT --] python RUNNER NAME
        < script > stdout.log 2> stderr.log; echo $? > exit_code'. The shell (the service's
        user, in the job's folder) opens the files and records the exit code where a
        restarted service finds it; only the script's Python runs as the account."""
        python = shlex.quote(self.python)
        run = f"{python} -c {shlex.quote(SCRIPT_RUNNER)} {shlex.quote(script.name)}"
        if account is not None:
            run = f"{python} -I -m thinkube_core.run_as {shlex.quote(account.pw_name)} -- {run}"
        line = f"{run} < {shlex.quote(str(script))} > stdout.log 2> stderr.log; echo $? > exit_code"
        return isolated(
            gpus,
            ["/bin/sh", "-c", line],
            self.settings.gpu_isolation,
            proc_dir=self.settings.nvidia_proc_dir,
            dev_dir=self.settings.nvidia_dev_dir,
            python=self.python,
        )

    def artifacts_location(self, entry_id: str, account: pwd.struct_passwd | None) -> Path:
        """Where a job keeps its artifacts (see the module): absolute, links resolved."""
        if account is None:
            return Path(os.path.realpath(self.job_folder(entry_id))) / ARTIFACTS_FOLDER
        home = Path(os.path.realpath(account.pw_dir))
        return home / HOME_ARTIFACTS_FOLDER / entry_id

    def artifacts_dir(self, entry: Mapping[str, Any]) -> Path | None:
        kept = (entry.get("placement") or {}).get("artifacts")
        if not isinstance(kept, str) or not os.path.isabs(kept):
            raise ArtifactsUnavailable(
                f"job {entry['id']} was started before this service kept artifacts"
            )
        return Path(kept)

    def environment(
        self,
        entry_id: str,
        gpus: tuple[str, ...],
        account: pwd.struct_passwd | None,
        artifacts: Path | None = None,
    ) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if name in KEPT_ENVIRONMENT or name.startswith("LC_")
        }
        if account is None:  # run_as sets these for an account
            me = pwd.getpwuid(os.geteuid())
            env.update(HOME=me.pw_dir, USER=me.pw_name, LOGNAME=me.pw_name)
        env.update(
            CUDA_VISIBLE_DEVICES=",".join(gpus),
            THINKUBE_JOB_ID=entry_id,
            PYTHONUNBUFFERED="1",
        )
        if artifacts is not None:
            env["THINKUBE_ARTIFACTS_DIR"] = str(artifacts)
        return env

    async def start(self, entry: Mapping[str, Any], request: JobRequest, node: str) -> dict:
        entry_id = entry["id"]
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = self.job_folder(entry_id)
        folder.mkdir(mode=0o700, exist_ok=True)
        script = folder / (Path(request.script_name).name or "script.py")
        script.write_text(request.script)
        account = await self.account(entry["user"])
        artifacts = self.artifacts_location(entry_id, account)
        if account is None:  # as the account, the job's runner makes it (see the module)
            artifacts.mkdir(mode=0o700, exist_ok=True)
        claim = await asyncio.to_thread(
            self.claims.claim, "job", entry_id, entry["user"], os.getpid(), self._choose(request)
        )
        try:
            cores = set(claim.cores)

            def pinned() -> None:  # in the child, before it runs anything
                os.sched_setaffinity(0, cores)

            process = await asyncio.create_subprocess_exec(
                *self.command(script, account, claim.gpus),
                cwd=folder,
                env=self.environment(entry_id, claim.gpus, account, artifacts),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=pinned,
            )
        except BaseException:
            await asyncio.to_thread(self.claims.release, "job", entry_id)
            raise
        created = _create_time(process.pid)  # None for a job that ended at once
        # The claim lives as long as the job's process (through a restart of the service).
        await asyncio.to_thread(self.claims.move_to, "job", entry_id, process.pid)
        self._watchers[entry_id] = asyncio.create_task(self._wait(entry_id, process))
        log.info(
            "job %s of %s runs as %s on cores %s, GPUs %s",
            entry_id,
            entry["user"],
            account.pw_name if account else f"uid {os.geteuid()}",
            ",".join(map(str, claim.cores)),
            ",".join(claim.gpus) or "none",
        )
        return {
            "backend": self.name,
            "pid": process.pid,
            "created": created,
            "gpus": list(claim.gpus),
            "cores": list(claim.cores),
            "memory": claim.memory,
            "account": account.pw_name if account else None,
            "artifacts": str(artifacts),
        }

    async def _wait(self, entry_id: str, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        await self._report(entry_id)

    async def _report(self, entry_id: str) -> None:
        self._watchers.pop(entry_id, None)
        await asyncio.to_thread(self.claims.release, "job", entry_id)
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
            await asyncio.to_thread(self.claims.release, "job", entry["id"])
            return False
        # Still running: it keeps what it holds (the claim is written again, should the
        # claims folder have been lost meanwhile).
        clashing = await asyncio.to_thread(self.claims.keep, _claim_of(entry, process.pid))
        for other in clashing:
            log.warning(
                "job %s holds a core or GPU %s %s claims too", entry["id"], other.kind, other.id
            )
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
        await asyncio.to_thread(self.claims.release, "job", entry["id"])

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


def _whole_numbers(values: Any) -> tuple[int, ...]:
    if not isinstance(values, list):
        return ()
    return tuple(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def _claim_of(entry: Mapping[str, Any], pid: int) -> Claim:
    """A running job's claim, from what its start recorded."""
    placement = entry.get("placement") or {}
    gpus = placement.get("gpus")
    memory = placement.get("memory")
    return Claim(
        kind="job",
        id=entry["id"],
        user=str(entry.get("user") or ""),
        pid=pid,
        cores=_whole_numbers(placement.get("cores")),
        gpus=tuple(g for g in gpus if isinstance(g, str)) if isinstance(gpus, list) else (),
        memory=memory if isinstance(memory, int) and memory > 0 else 0,
    )


def _create_time(pid: int) -> float | None:
    """When the process started (None when it has already ended and been reaped)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


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
