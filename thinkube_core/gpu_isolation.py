"""Hide the GPUs a local server or job was not given from NVML (so from nvidia-smi), not only
CUDA.

``CUDA_VISIBLE_DEVICES`` hides GPUs from CUDA programs only. NVML, which nvidia-smi and GPU
monitors read, lists every GPU whose device file the process may open, and skips those it
may not (``NVML_ERROR_NO_PERMISSION``). So, as a container runtime does, each local server
that has GPUs to hide is started through this module's command, which sets up a private
mount namespace for it (inside an unprivileged user namespace when it does not run as
root) where:

- each other GPU's ``/dev/nvidia<minor>`` is covered by an empty, read-only file that
  nobody may open, so NVML and CUDA skip that GPU;
- ``/proc/driver/nvidia/gpus`` lists only the server's own GPUs (as in a container).

A server running as root also loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, without which
root, too, is refused the covered files. Nothing outside the server changes, and the server
keeps its user, files, network and processes. This keeps people's tools on their own GPUs;
like CUDA_VISIBLE_DEVICES it is not a security boundary against someone set on escaping it.

Used as a command prefix by ThinkubeLocalSpawner (servers) and LocalJobs (the service's
jobs)::

    python -m thinkube_core.gpu_isolation --visible GPU-<uuid>[,...] [--required] -- CMD...

Without ``--required``, a machine that refuses namespaces (for instance Ubuntu's AppArmor
restriction on unprivileged user namespaces) gets a warning in the server's log and the
command runs with CUDA_VISIBLE_DEVICES alone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NVIDIA_PROC_DIR = "/proc/driver/nvidia/gpus"
DEV_DIR = "/dev"


# --- pure: what the driver lists, and what to hide -----------------------------------------


@dataclass(frozen=True)
class DriverGpu:
    """One GPU as /proc/driver/nvidia/gpus/<bus>/information describes it."""

    bus: str  # the folder's name, e.g. 0000:3b:00.0
    uuid: str
    minor: int  # /dev/nvidia<minor>


def parse_information(bus: str, text: str) -> DriverGpu | None:
    """The driver's `information` file ("GPU UUID:", "Device Minor:" lines, tab-aligned);
    None when either line is missing or odd."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    uuid, minor = fields.get("gpu uuid", ""), fields.get("device minor", "")
    if not uuid.startswith(("GPU-", "MIG-")) or not minor.isdigit():
        return None
    return DriverGpu(bus=bus, uuid=uuid, minor=int(minor))


def driver_gpus(proc_dir: str = NVIDIA_PROC_DIR) -> list[DriverGpu]:
    """The GPUs the NVIDIA driver lists on this machine (none without the driver)."""
    found = []
    try:
        buses = sorted(os.listdir(proc_dir))
    except OSError:
        return []
    for bus in buses:
        try:
            text = Path(proc_dir, bus, "information").read_text()
        except OSError:
            continue
        gpu = parse_information(bus, text)
        if gpu is not None:
            found.append(gpu)
    return found


@dataclass(frozen=True)
class HidingPlan:
    hidden_devices: tuple[str, ...]  # device files to cover
    kept_buses: tuple[str, ...]  # /proc/driver/nvidia/gpus entries the server keeps

    @property
    def hides_anything(self) -> bool:
        return bool(self.hidden_devices)


def hiding_plan(
    visible: Iterable[str], gpus: Iterable[DriverGpu], dev_dir: str = DEV_DIR
) -> HidingPlan:
    """Cover the device file of every GPU whose UUID is not in `visible`."""
    visible = set(visible)
    gpus = list(gpus)
    return HidingPlan(
        hidden_devices=tuple(
            os.path.join(dev_dir, f"nvidia{g.minor}") for g in gpus if g.uuid not in visible
        ),
        kept_buses=tuple(g.bus for g in gpus if g.uuid in visible),
    )


def isolation_command(
    visible: Iterable[str],
    cmd: list[str],
    required: bool = False,
    proc_dir: str = NVIDIA_PROC_DIR,
    dev_dir: str = DEV_DIR,
    python: str = sys.executable,
) -> list[str]:
    """`cmd` prefixed with this module's command."""
    prefix = [python, "-m", "thinkube_core.gpu_isolation", "--visible", ",".join(visible)]
    if required:
        prefix.append("--required")
    if proc_dir != NVIDIA_PROC_DIR:
        prefix += ["--proc-dir", proc_dir]
    if dev_dir != DEV_DIR:
        prefix += ["--dev-dir", dev_dir]
    return [*prefix, "--", *cmd]


ISOLATION_MODES = ("auto", "required", "off")


def isolated(
    visible: Iterable[str],
    cmd: list[str],
    mode: str = "auto",
    proc_dir: str = NVIDIA_PROC_DIR,
    dev_dir: str = DEV_DIR,
    python: str = sys.executable,
) -> list[str]:
    """`cmd`, run so that the machine's other GPUs are hidden from it: prefixed with this
    module's command where the driver lists a GPU outside `visible` and `mode` is not
    "off"; as it is otherwise (no NVIDIA GPU here, or it has them all)."""
    if mode not in ISOLATION_MODES:
        raise ValueError(f"GPU isolation {mode!r}: one of {', '.join(ISOLATION_MODES)}")
    visible = list(visible)
    if mode == "off" or not hiding_plan(visible, driver_gpus(proc_dir), dev_dir).hides_anything:
        return list(cmd)
    return isolation_command(
        visible, cmd, required=mode == "required", proc_dir=proc_dir, dev_dir=dev_dir, python=python
    )


# --- the namespace: Linux calls through libc ------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class IsolationError(Exception):
    """The namespace could not be set up; the message says which step and why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, step: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise IsolationError(f"{step}: {os.strerror(errno)}")


def _mount(libc, source, target, fstype, flags, data, step) -> None:
    encode = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), step)


def enter_namespace(libc: ctypes.CDLL) -> None:
    """A private mount namespace for this process: as root directly, otherwise inside a new
    user namespace where this process keeps its own uid and gid."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        _check(libc.unshare(CLONE_NEWNS), "a private mount namespace")
    else:
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "an unprivileged user namespace")
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        except OSError as err:
            raise IsolationError(f"mapping the user namespace: {err.strerror}") from None
    # From here on, nothing mounted reaches the rest of the machine.
    _mount(libc, None, "/", None, MS_REC | MS_SLAVE, None, "making mounts private")


def hide(plan: HidingPlan, proc_dir: str, libc: ctypes.CDLL) -> None:
    """Apply `plan` in the current (private) mount namespace."""
    staging = tempfile.mkdtemp(prefix="thinkube-gpu-")
    try:
        _mount(libc, "tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755", "tmpfs")
        covering = os.path.join(staging, "hidden-gpu")
        os.close(os.open(covering, os.O_CREAT | os.O_WRONLY, 0))
        os.chmod(covering, 0)
        if os.path.isdir(proc_dir):
            # Keep the real folder reachable under `staging` while proc_dir becomes a fresh
            # tmpfs holding only the server's GPUs.
            real = os.path.join(staging, "gpus")
            os.mkdir(real)
            _mount(libc, proc_dir, real, None, MS_BIND | MS_REC, None, f"reading {proc_dir}")
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _mount(libc, "tmpfs", proc_dir, "tmpfs", flags, "size=64k,mode=0555", proc_dir)
            for bus in plan.kept_buses:
                os.mkdir(os.path.join(proc_dir, bus), 0o555)
                _mount(
                    libc,
                    os.path.join(real, bus),
                    os.path.join(proc_dir, bus),
                    None,
                    MS_BIND | MS_REC,
                    None,
                    f"keeping {bus}",
                )
            _mount(libc, None, proc_dir, None, MS_REMOUNT | MS_RDONLY | flags, None, proc_dir)
            _check(libc.umount2(os.fsencode(real), MNT_DETACH), "releasing the driver folder")
        # Read-only, so not even the file's owner can make it openable again.
        _mount(
            libc, None, staging, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None, "tmpfs"
        )
        for device in plan.hidden_devices:
            if os.path.exists(device):
                _mount(libc, covering, device, None, MS_BIND, None, f"covering {device}")
    finally:
        # The covering file lives on through its bind mounts; the folder goes.
        libc.umount2(os.fsencode(staging), MNT_DETACH)
        with contextlib.suppress(OSError):  # never hide the error that brought us here
            os.rmdir(staging)
    if os.geteuid() == 0:
        drop_capabilities(libc, (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities(libc: ctypes.CDLL, capabilities: Iterable[int]) -> None:
    """Remove capabilities (numbers below 32) from this process and from what any program it
    runs may regain: the bounding set, and the effective, permitted and inheritable sets."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "reading capabilities")
    for capability in capabilities:
        _check(libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0), "dropping file overrides")
        keep = ~(1 << capability) & 0xFFFFFFFF
        data[0].effective &= keep
        data[0].permitted &= keep
        data[0].inheritable &= keep
    _check(libc.capset(ctypes.byref(header), data), "dropping file overrides")


def isolate(visible: Iterable[str], proc_dir: str = NVIDIA_PROC_DIR, dev_dir: str = DEV_DIR) -> int:
    """Set up this process's namespace; returns how many GPUs were hidden."""
    plan = hiding_plan(visible, driver_gpus(proc_dir), dev_dir)
    if not plan.hides_anything:
        return 0
    libc = _libc()
    enter_namespace(libc)
    hide(plan, proc_dir, libc)
    return len(plan.hidden_devices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m thinkube_core.gpu_isolation",
        description="Run a command that sees only the given NVIDIA GPUs, in NVML as in CUDA.",
    )
    parser.add_argument("--visible", default="", help="comma-separated GPU UUIDs to keep")
    parser.add_argument(
        "--required", action="store_true", help="fail rather than run without isolation"
    )
    parser.add_argument("--proc-dir", default=NVIDIA_PROC_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--dev-dir", default=DEV_DIR, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    visible = [uuid for uuid in args.visible.split(",") if uuid]
    try:
        isolate(visible, args.proc_dir, args.dev_dir)
    except (IsolationError, OSError) as err:
        message = f"thinkube: cannot hide the other GPUs from this server ({err})"
        if args.required:
            print(f"{message}; not starting (gpu_isolation is 'required')", file=sys.stderr)
            return 1
        print(
            f"{message}; nvidia-smi will list every GPU, CUDA sees only {visible or 'none'}",
            file=sys.stderr,
        )
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"thinkube: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
