"""Which of this machine's CPU cores and GPUs are held, and by whom: one claims folder that
the hub (notebook servers, ThinkubeLocalSpawner) and the service (GPU jobs, LocalJobs) both
read and write, so that a server and a job never get the same GPU or core.

Each holder has one small JSON file in the folder::

    {"kind": "server" | "job", "id": "alice/" | "j-3f9c...", "user": "alice",
     "pid": 4242, "pid_started": 123456, "cores": [6, 7], "gpus": ["GPU-..."],
     "memory": 8589934592, "claimed_at": 1760000000.0}

- Choosing and claiming happen under an exclusive ``flock`` on the folder's lock file, so
  two processes (or two threads of one) never pick the same device: each sees what the
  other claimed.
- A file is written whole (a temporary file renamed over it): readers never see half.
- A claim whose process is gone (its ``pid`` no longer runs, or runs a newer process
  started at another time) is stale: it counts for nothing and the next claim removes it.
  A server's claim names the hub's pid while the server starts, then the server's own.
- A claim is released (its file removed) when its server or job stops.

The folder is ``$THINKUBE_CLAIMS_DIR`` when set (the hub passes it to the service), otherwise
``thinkube-claims`` in the working directory (where JupyterHub keeps its own state by
default). Both processes must be able to write it; it is made mode 0700.

Pure functions (which claims are live, what they hold, which cores and GPUs to pick) are
apart from :class:`DeviceClaims`, the thin file I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "CLAIMS_DIR_ENV",
    "KINDS",
    "Claim",
    "DeviceClaims",
    "claim_file_name",
    "claims_dir",
    "held_by",
    "live_claims",
    "parse_claim",
    "pick_cores",
    "pick_gpus",
    "process_alive",
    "process_started",
]

CLAIMS_DIR_ENV = "THINKUBE_CLAIMS_DIR"
DEFAULT_FOLDER = "thinkube-claims"
KINDS = ("server", "job")
LOCK_FILE = ".lock"


def claims_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The claims folder: $THINKUBE_CLAIMS_DIR, else `thinkube-claims` in the working
    directory, as an absolute path."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(CLAIMS_DIR_ENV) or DEFAULT_FOLDER).absolute()


# --- pure: claims, what they hold, what to pick ----------------------------------------------


@dataclass(frozen=True)
class Claim:
    kind: str  # "server" or "job"
    id: str  # a server: "<user>/<server name>"; a job: its queue id
    user: str
    pid: int
    pid_started: int | None = None  # the process's start time (clock ticks after boot)
    cores: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()  # UUIDs
    memory: int = 0  # bytes
    claimed_at: float = field(default=0.0, compare=False)

    @property
    def holder(self) -> tuple[str, str]:
        return self.kind, self.id

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "user": self.user,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "cores": list(self.cores),
            "gpus": list(self.gpus),
            "memory": self.memory,
            "claimed_at": self.claimed_at,
        }


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_claim(text: str | bytes) -> Claim | None:
    """A claim file's content, its fields checked; None when it is not one (a file left
    half-written by an older version, or not ours)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    kind, holder, user, pid = data.get("kind"), data.get("id"), data.get("user"), data.get("pid")
    cores, gpus = data.get("cores"), data.get("gpus")
    if kind not in KINDS or not isinstance(holder, str) or not isinstance(user, str):
        return None
    if not _whole(pid) or pid == 0:
        return None
    if not isinstance(cores, list) or not all(_whole(c) for c in cores):
        return None
    if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
        return None
    started = data.get("pid_started")
    memory = data.get("memory")
    claimed_at = data.get("claimed_at")
    return Claim(
        kind=kind,
        id=holder,
        user=user,
        pid=pid,
        pid_started=started if _whole(started) else None,
        cores=tuple(cores),
        gpus=tuple(gpus),
        memory=memory if _whole(memory) else 0,
        claimed_at=float(claimed_at) if isinstance(claimed_at, int | float) else 0.0,
    )


def live_claims(
    claims: Iterable[Claim], alive: Callable[[Claim], bool]
) -> tuple[list[Claim], list[Claim]]:
    """(live, stale): a claim is live while `alive` says its process runs."""
    live, stale = [], []
    for claim in claims:
        (live if alive(claim) else stale).append(claim)
    return live, stale


def held_by(
    claims: Iterable[Claim], besides: tuple[str, str] | None = None
) -> tuple[set[int], set[str]]:
    """The cores and GPUs the claims hold, leaving out the holder `besides` (kind, id)."""
    cores: set[int] = set()
    gpus: set[str] = set()
    for claim in claims:
        if claim.holder != besides:
            cores.update(claim.cores)
            gpus.update(claim.gpus)
    return cores, gpus


def pick_cores(cores: Sequence[int], taken: set[int], count: int) -> tuple[int, ...] | None:
    """`count` free cores of `cores`, the highest-numbered first (core 0 carries most of the
    system's interrupts), in order; None when fewer are free."""
    free = sorted(c for c in cores if c not in taken)
    if count <= 0:
        return ()
    if len(free) < count:
        return None
    return tuple(free[-count:])


def free_gpus(
    gpus: Iterable[Mapping[str, Any]],
    taken: set[str],
    accepts: Callable[[Mapping[str, Any]], bool] = lambda gpu: True,
) -> list[Mapping[str, Any]]:
    """The free GPUs (node document entries: ``uuid``, ``index``, ``name``) that `accepts`
    takes, lowest index first."""
    return sorted(
        (g for g in gpus if g.get("uuid") not in taken and accepts(g)),
        key=lambda g: g.get("index", 0),
    )


def pick_gpus(
    gpus: Iterable[Mapping[str, Any]],
    taken: set[str],
    count: int,
    accepts: Callable[[Mapping[str, Any]], bool] = lambda gpu: True,
) -> tuple[str, ...] | None:
    """The UUIDs of `count` free GPUs that `accepts` takes, lowest index first; None when
    fewer are free."""
    if count <= 0:
        return ()
    free = free_gpus(gpus, taken, accepts)
    if len(free) < count:
        return None
    return tuple(str(g["uuid"]) for g in free[:count])


def claim_file_name(kind: str, holder_id: str) -> str:
    """A file name for any holder id (ids hold '/', '@' and more): kind + a digest."""
    digest = hashlib.sha256(holder_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{kind}-{digest}.json"


# --- processes --------------------------------------------------------------------------------


def process_started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot, from /proc/<pid>/stat), telling
    it from a later process given the same pid; None when it is gone, a zombie, or there
    is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name (2nd field) may hold spaces and parentheses: the fields after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def process_alive(claim: Claim) -> bool:
    """Whether the claim's process still runs (the same process: its start time matches)."""
    if Path("/proc/self/stat").exists():
        started = process_started(claim.pid)
        if started is None:
            return False
        return claim.pid_started is None or started == claim.pid_started
    try:  # no /proc: existence alone
        os.kill(claim.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the folder -------------------------------------------------------------------------------


class DeviceClaims:
    """The claims folder. Every method is blocking file I/O (small files, one lock held for
    a few milliseconds): from an event loop, call it in a thread."""

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        alive: Callable[[Claim], bool] = process_alive,
    ) -> None:
        self.folder = Path(folder) if folder is not None else claims_dir()
        self.alive = alive

    def _path(self, kind: str, holder_id: str) -> Path:
        return self.folder / claim_file_name(kind, holder_id)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (exclusive, across processes and threads)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> list[tuple[Path, Claim]]:
        found = []
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return []
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            path = self.folder / name
            try:
                claim = parse_claim(path.read_bytes())
            except OSError:
                continue
            if claim is not None:
                found.append((path, claim))
        return found

    def current(self) -> list[Claim]:
        """The live claims (read without the lock: files are replaced whole)."""
        live, _ = live_claims((c for _, c in self._read()), self.alive)
        return live

    def _live_dropping_stale(self) -> list[Claim]:
        """Under the lock: the live claims; stale ones' files are removed."""
        live = []
        for path, claim in self._read():
            if self.alive(claim):
                live.append(claim)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return live

    def _write(self, claim: Claim) -> None:
        path = self._path(claim.kind, claim.id)
        temporary = self.folder / f".{path.name}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(claim.as_dict(), handle)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

    def claim(
        self,
        kind: str,
        holder_id: str,
        user: str,
        pid: int,
        choose: Callable[[set[int], set[str]], tuple[Sequence[int], Sequence[str], int]],
    ) -> Claim:
        """Choose and claim in one step: `choose(taken_cores, taken_gpus)` (what every other
        live claim holds) returns (cores, GPU UUIDs, memory bytes), or raises to claim
        nothing. The holder's earlier claim, if any, is replaced."""
        if kind not in KINDS:
            raise ValueError(f"unknown claim kind {kind!r}")
        with self.locked():
            live = self._live_dropping_stale()
            taken_cores, taken_gpus = held_by(live, besides=(kind, holder_id))
            cores, gpus, memory = choose(taken_cores, taken_gpus)
            overlap = (set(cores) & taken_cores, set(gpus) & taken_gpus)
            if overlap[0] or overlap[1]:  # a chooser that ignored what it was told
                raise ValueError(f"{kind} {holder_id} chose devices held by another: {overlap}")
            claim = Claim(
                kind=kind,
                id=holder_id,
                user=user,
                pid=pid,
                pid_started=process_started(pid),
                cores=tuple(cores),
                gpus=tuple(gpus),
                memory=int(memory),
                claimed_at=time.time(),
            )
            self._write(claim)
            return claim

    def keep(self, claim: Claim) -> list[Claim]:
        """Record a claim as it is (a server or job followed again after a restart, whose
        devices were picked before); returns the live claims of others that hold any of
        its devices (none, unless the folder was lost meanwhile)."""
        with self.locked():
            live = self._live_dropping_stale()
            clashing = [
                c
                for c in live
                if c.holder != claim.holder
                and (set(c.cores) & set(claim.cores) or set(c.gpus) & set(claim.gpus))
            ]
            if claim.pid_started is None:
                claim = replace(claim, pid_started=process_started(claim.pid))
            self._write(claim)
            return clashing

    def move_to(self, kind: str, holder_id: str, pid: int) -> Claim | None:
        """The holder's claim now follows process `pid` (a server, once started); None when
        it holds no claim."""
        with self.locked():
            path = self._path(kind, holder_id)
            try:
                claim = parse_claim(path.read_bytes())
            except OSError:
                return None
            if claim is None:
                return None
            claim = replace(claim, pid=pid, pid_started=process_started(pid))
            self._write(claim)
            return claim

    def release(self, kind: str, holder_id: str) -> None:
        if not self.folder.is_dir():
            return  # nothing was ever claimed here
        with self.locked():
            with contextlib.suppress(FileNotFoundError):
                self._path(kind, holder_id).unlink()

    def get(self, kind: str, holder_id: str) -> Claim | None:
        try:
            return parse_claim(self._path(kind, holder_id).read_bytes())
        except OSError:
            return None
