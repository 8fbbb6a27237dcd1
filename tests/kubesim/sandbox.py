"""Volumes for the process runtime: a pod's volumes as directories on this machine, and a
process that sees them at their mountPaths.

Each volume of a started pod becomes a directory: ``configMap`` and ``secret`` volumes hold
one file per key (or per ``items`` entry) and are mounted read-only; ``emptyDir`` is empty
and goes with the pod; a ``persistentVolumeClaim`` is the directory of its bound
PersistentVolume, shared by every pod that mounts the claim and kept while the volume
exists; ``hostPath`` is the path itself. Other sources are not mounted.

A container's process sees them in one of two ways (``KubeSim(volume_mounts=...)``):

- ``namespace`` (chosen by ``auto`` when this machine allows it): the process starts in a
  private mount namespace (a user namespace too when kubesim is not root) whose root is a
  tmpfs carrying bind mounts of this machine's top-level folders plus each volume at its
  mountPath; a folder of this machine on the way to a mountPath that does not exist there is
  shadowed by a tmpfs of bind mounts, so nothing is created outside the pod. Paths in the
  program, its arguments and its files all work: ``python /job/script.py`` runs the script
  of a ConfigMap mounted at /job, and it may write to /artifacts.
- ``rewrite`` (the fallback, e.g. in a container without CAP_SYS_ADMIN): a mountPath at the
  start of an argument, or after ``=`` or ``:``, in the command, its arguments and the
  environment's values is replaced by the volume's directory. Paths the program builds
  itself are not rewritten.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMESPACE = "namespace"
REWRITE = "rewrite"
AUTO = "auto"
MOUNT_MODES = (AUTO, NAMESPACE, REWRITE)


class MountError(Exception):
    """A volume could not be set up; the message is the kubelet's FailedMount wording."""


@dataclass(frozen=True)
class Mount:
    source: str  # the directory (or file) on this machine
    target: str  # the mountPath in the container
    read_only: bool


# -- preparing volumes (on this machine) ---------------------------------------------------------


def _write_items(directory: Path, data: Mapping[str, bytes], source: Mapping[str, Any]) -> None:
    default_mode = source.get("defaultMode", 0o644)
    items = source.get("items")
    chosen = (
        [(item["key"], item.get("path") or item["key"], item.get("mode")) for item in items]
        if items
        else [(key, key, None) for key in data]
    )
    for key, relative, mode in chosen:
        if key not in data:
            if source.get("optional"):
                continue
            raise MountError(f'configmap references non-existent config key: "{key}"')
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(mode if mode is not None else default_mode)


def prepare_volume(
    volume: Mapping[str, Any],
    directory: Path,
    find: Callable[[str, str], dict | None],
    volume_root: Path,
) -> tuple[str, bool]:
    """Make one volume's directory; (its path, read-only). ``find(kind, name)`` reads a
    ConfigMap, Secret or PersistentVolumeClaim of the pod's namespace."""
    name = volume["name"]
    if "configMap" in volume or "secret" in volume:
        is_secret = "secret" in volume
        source = volume["secret" if is_secret else "configMap"] or {}
        object_name = source.get("secretName" if is_secret else "name", "")
        kind = "Secret" if is_secret else "ConfigMap"
        obj = find(kind, object_name)
        target = directory / name
        target.mkdir(parents=True, exist_ok=True)
        if obj is None:
            if source.get("optional"):
                return str(target), True
            raise MountError(
                f'MountVolume.SetUp failed for volume "{name}" : '
                f'{kind.lower()} "{object_name}" not found'
            )
        data: dict[str, bytes] = {}
        if is_secret:
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        else:
            data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        try:
            _write_items(target, data, source)
        except MountError as err:
            raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {err}') from None
        return str(target), True
    if "emptyDir" in volume:
        target = directory / name
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o777)
        return str(target), False
    if "persistentVolumeClaim" in volume:
        source = volume["persistentVolumeClaim"] or {}
        claim = find("PersistentVolumeClaim", source.get("claimName", ""))
        volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
        if not volume_name:
            raise MountError(
                f'MountVolume.SetUp failed for volume "{name}" : persistentvolumeclaim '
                f'"{source.get("claimName", "")}" is not bound'
            )
        target = volume_root / volume_name
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o777)
        return str(target), bool(source.get("readOnly"))
    if "hostPath" in volume:
        source = volume["hostPath"] or {}
        path = Path(source.get("path", ""))
        if source.get("type") == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise MountError(
                f'MountVolume.SetUp failed for volume "{name}" : hostPath type check failed: '
                f"{path} is not a directory"
            )
        return str(path), False
    raise LookupError(name)  # a source kubesim does not mount


def container_mounts(
    container: Mapping[str, Any], prepared: Mapping[str, tuple[str, bool]]
) -> list[Mount]:
    mounts = []
    for mount in container.get("volumeMounts") or []:
        found = prepared.get(mount.get("name", ""))
        if found is None:
            continue
        source, read_only = found
        if mount.get("subPath"):
            source = os.path.join(source, mount["subPath"])
            if not os.path.exists(source):
                os.makedirs(source, exist_ok=True)
        mounts.append(Mount(source, mount["mountPath"], read_only or bool(mount.get("readOnly"))))
    return mounts


# -- the rewrite mode -----------------------------------------------------------------------------


def rewrite(text: str, mounts: list[Mount]) -> str:
    """Replace each mountPath (at the start, or after = or :) by its directory."""
    for mount in sorted(mounts, key=lambda m: len(m.target), reverse=True):
        target = mount.target.rstrip("/") or "/"
        pattern = re.compile(rf"(^|[=:]){re.escape(target)}(?=/|$|[:\s])")
        text = pattern.sub(lambda m, source=mount.source: m.group(1) + source, text)
    return text


# -- the namespace mode ---------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
# statvfs flag -> mount flag: nosuid, nodev, noexec, noatime, nodiratime, relatime
_KEPT_FLAGS = ((2, 0x2), (4, 0x4), (8, 0x8), (1024, 0x400), (2048, 0x800), (4096, 0x200000))


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    """libc, loaded once in the parent: a forked child must not go looking for it."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True))
    return _LIBC[0]


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


class _Mounter:
    def __init__(self, libc: ctypes.CDLL):
        self.libc = libc

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data=None):
        encode = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        _call(
            self.libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
            f"mounting {target}",
        )

    def bind(self, source: str, target: str, read_only: bool = False) -> None:
        self.mount(source, target, None, MS_BIND | MS_REC)
        if read_only:
            # A remount must keep the flags the source's mount has (locked in a user
            # namespace), so they are read back and kept.
            flags = os.statvfs(target).f_flag
            kept = sum(ms for st, ms in _KEPT_FLAGS if flags & st)
            self.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)

    def tmpfs(self, target: str) -> None:
        self.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")


def _enter_namespace(libc: ctypes.CDLL) -> None:
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        _call(libc.unshare(CLONE_NEWNS), "a private mount namespace")
    else:
        _call(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "a user namespace")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")


def _populate(mounter: _Mounter, host_dir: str, target: str) -> None:
    """Fill a fresh tmpfs ``target`` with bind mounts of ``host_dir``'s entries."""
    for entry in sorted(os.listdir(host_dir)):
        source, destination = os.path.join(host_dir, entry), os.path.join(target, entry)
        if os.path.islink(source):
            os.symlink(os.readlink(source), destination)
        elif os.path.isdir(source):
            os.mkdir(destination)
            mounter.bind(source, destination)
        else:
            with contextlib.suppress(OSError):  # sockets and the like are left out
                open(destination, "w").close()
                mounter.bind(source, destination)


def build_root(mounter: _Mounter, root: str, mounts: list[Mount]) -> None:
    """A root folder for the process: this machine's top level, plus each mount."""
    mounter.tmpfs(root)
    _populate(mounter, "/", root)
    ours = {root}  # folders on a tmpfs of ours (or volumes): children may be made there
    for mount in sorted(mounts, key=lambda m: m.target.count("/")):
        current = root
        parts = [p for p in mount.target.split("/") if p]
        for index, part in enumerate(parts):
            following = os.path.join(current, part)
            if not os.path.lexists(following):
                if current not in ours:
                    # A folder of this machine: shadow it, so the new entry stays ours.
                    mounter.tmpfs(current)
                    _populate(mounter, "/" + os.path.relpath(current, root), current)
                    ours.add(current)
                last = index == len(parts) - 1
                if last and not os.path.isdir(mount.source):
                    open(following, "w").close()
                else:
                    os.mkdir(following)
                ours.add(following)
            current = following
        mounter.bind(mount.source, current, mount.read_only)
        ours.add(current)


def namespace_preexec(
    mounts: list[Mount], root: str, workdir: str, identity: tuple[int, int] | None
) -> Callable[[], None]:
    """What the child runs before exec: its own mount namespace and root, then its user."""

    libc = _libc()

    def enter() -> None:
        _enter_namespace(libc)
        build_root(_Mounter(libc), root, mounts)
        os.chroot(root)
        os.chdir(workdir)
        if identity is not None:
            os.setgroups([])
            os.setgid(identity[1])
            os.setuid(identity[0])

    return enter


def namespaces_work() -> bool:
    """Whether this machine lets kubesim give a process its own mount namespace and root:
    a throwaway child tries it."""
    root = tempfile.mkdtemp(prefix="kubesim-probe-")
    try:
        result = subprocess.run(
            ["true"],
            preexec_fn=namespace_preexec([], root, "/", None),
            capture_output=True,
            timeout=20,
        )
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(root)


__all__ = [
    "MOUNT_MODES",
    "Mount",
    "MountError",
    "build_root",
    "container_mounts",
    "namespace_preexec",
    "namespaces_work",
    "prepare_volume",
    "rewrite",
]
