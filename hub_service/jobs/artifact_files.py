"""A job's artifacts as files: how a request names one, which bytes a Range asks for, and
reading them without ever leaving their folder. Pure functions first, then the file I/O
(blocking: the handlers run it off the event loop).

The folder is written by the job, so by the person: anything in it may be a symbolic link
(to /etc, to another person's files), a FIFO, or be replaced while it is read. So every
folder on the way, from `/` down, is opened relative to the one before without following a
link (openat with O_NOFOLLOW), and a file is read only when, once open, it is a regular
file: no link is ever followed, whatever it points at, and no check can be raced by a
rename (what is read is the descriptor that was checked). A file must also belong to whoever
owns the folder (the account the job ran as): a hard link to someone else's file, which a
system without protected hard links lets anyone make, is not theirs to read through us.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "ArtifactPathError",
    "HashCache",
    "Listing",
    "RangeNotSatisfiable",
    "artifact_parts",
    "content_disposition",
    "etag_of",
    "list_artifacts",
    "open_artifact",
    "open_folder",
    "parse_range",
    "range_applies",
    "user_folder",
]

MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255  # what Linux file systems allow in one name
# A listing stops after this many files (and says so): a job that wrote a million small
# files is answered, not walked for minutes.
MAX_FILES = 10_000
MAX_DEPTH = 64
HASH_CHUNK_BYTES = 1 << 20
# Number too long to be a byte position (int() of thousands of digits is slow, or refused).
MAX_DIGITS = 19

_FOLDER_STEP = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FOLDER_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone left there does not wait for a writer.
_FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What a link, a missing step or a step that is not a folder looks like when opened.
NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


# -- pure --------------------------------------------------------------------------------------


class ArtifactPathError(ValueError):
    """A requested artifact path that cannot name a file in the folder; says why."""


def artifact_parts(path: str) -> tuple[str, ...]:
    """The names of a relative artifact path (`adapter/config.json`), each one step down;
    ArtifactPathError for a path that is empty, absolute, holds a NUL, or has an empty,
    `.` or `..` step (nothing that could leave the folder or name it twice)."""
    if not path:
        raise ArtifactPathError("name a file: the path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise ArtifactPathError(f"the path is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise ArtifactPathError("the path holds a NUL character")
    if path.startswith("/"):
        raise ArtifactPathError("the path must be relative to the job's artifacts folder")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise ArtifactPathError(
                "the path may not have empty, '.' or '..' steps (it names a file below "
                "the job's artifacts folder)"
            )
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ArtifactPathError(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
    return parts


_KEPT_IN_USER_FOLDER = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-@+"
)


def user_folder(user: str) -> str:
    """A hub user name as one folder name: ASCII letters, digits, `_-@+` and (not first) `.`
    stay, anything else becomes %XX of its UTF-8 bytes (`%` too), so that distinct names get
    distinct folders and none is `.`, `..` or holds a `/`. A very long result is cut and
    ends with a hash of the name."""
    out = []
    for index, char in enumerate(user):
        if char in _KEPT_IN_USER_FOLDER or (char == "." and index > 0):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    folder = "".join(out) or "%00"
    if len(folder) > 200:
        digest = hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        folder = f"{folder[:180]}-{digest}"
    return folder


class RangeNotSatisfiable(Exception):
    """A Range none of whose bytes lie in the file (answered 416)."""


def _position(digits: str) -> int | None:
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) if len(digits) <= MAX_DIGITS else 1 << 63


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) that a `Range: bytes=a-b`, `a-` or `-n` header
    asks for in a file of `size` bytes, cut to the file; None to send the whole file (no
    header, or one this service does not take: another unit, several ranges, bad syntax,
    which HTTP lets a server ignore); RangeNotSatisfiable when none of it is in the file."""
    if not header:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:  # the last n bytes
        count = _position(last_text)
        if count is None:
            return None
        if count == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - count), size - 1
    first = _position(first_text)
    last = _position(last_text) if last_text else None
    if first is None or (last_text and (last is None or last < first)):
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, size - 1 if last is None else min(last, size - 1)


def range_applies(if_range: str | None, etag: str, last_modified: str) -> bool:
    """Whether a Range is honoured under `If-Range`: with no If-Range, yes; else only when
    it names this very version of the file (its ETag, compared strongly, or its
    Last-Modified date exactly); otherwise the whole file is sent."""
    if not if_range:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    return value == last_modified


def etag_of(info: os.stat_result) -> str:
    """A strong ETag for one version of a file: its inode, size and modification time."""
    return f'"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"'


def content_disposition(name: str) -> str:
    """`attachment` with a safe `filename` (printable ASCII, quotes and backslashes
    replaced) and, for any other name, its exact UTF-8 form as `filename*` (RFC 6266)."""
    plain = (
        "".join(c if " " <= c <= "~" and c not in '"\\%;' else "_" for c in name).strip()
        or "artifact"
    )
    header = f'attachment; filename="{plain}"'
    if plain != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


# -- files -------------------------------------------------------------------------------------


def open_folder(path: Path) -> int:
    """A descriptor of the folder `path` (absolute), for reading: every step from `/` opened
    without following a link. OSError with ENOENT, ENOTDIR or ELOOP (NOT_THERE) when a step
    is missing, not a folder, or a link."""
    if not path.is_absolute():
        raise ValueError(f"{path} is not an absolute path")
    parts = path.parts[1:]
    fd = os.open("/", _FOLDER_READ if not parts else _FOLDER_STEP)
    try:
        for index, part in enumerate(parts):
            flags = _FOLDER_READ if index == len(parts) - 1 else _FOLDER_STEP
            step = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_artifact(folder_fd: int, parts: tuple[str, ...]) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file `parts` below the folder, and its stat; OSError
    (NOT_THERE) when a step is missing or a link, or it is not a regular file of the
    folder's owner."""
    owner = os.fstat(folder_fd).st_uid
    fd = os.dup(folder_fd)
    try:
        for part in parts[:-1]:
            step = os.open(part, _FOLDER_STEP, dir_fd=fd)
            os.close(fd)
            fd = step
        handle = os.open(parts[-1], _FILE_READ, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
            raise OSError(errno.ENOENT, "not a regular file of the folder's owner")
        os.set_blocking(handle, True)
    except BaseException:
        os.close(handle)
        raise
    return handle, info


class HashCache:
    """sha256 digests by (file, size, modification time, inode): a file is hashed once per
    version however often it is listed. Bounded, least recently used out first; safe to
    use from several threads."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._digests: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # digests computed (not found): for tests and the curious

    def get(self, key: tuple) -> str | None:
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
            return digest

    def put(self, key: tuple, digest: str) -> None:
        with self._lock:
            self._digests[key] = digest
            self._digests.move_to_end(key)
            while len(self._digests) > self.max_entries:
                self._digests.popitem(last=False)


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, HASH_CHUNK_BYTES, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)


@dataclass(frozen=True)
class ArtifactFile:
    path: str  # relative, `/`-separated
    size: int
    sha256: str
    modified: float  # seconds since the epoch
    etag: str


@dataclass(frozen=True)
class Listing:
    files: list[ArtifactFile]
    truncated: bool  # more than MAX_FILES files: the first ones, in walking order
    # links, FIFOs, sockets, devices, files of another owner and names that are not UTF-8:
    # not listed
    skipped: int


def _walk(folder_fd: int) -> Iterator[tuple[str, int, str] | None]:
    """(relative path, the folder's descriptor, the file's name) of every regular file
    below the folder, depth first, links never followed; None for each thing skipped.
    Each folder's descriptor is open while its files are yielded."""
    stack: list[tuple[str, int, int]] = [("", os.dup(folder_fd), 0)]
    try:
        while stack:
            prefix, fd, depth = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    found = sorted(entries, key=lambda e: e.name)
                for entry in found:
                    name = entry.name
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        yield None
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 > MAX_DEPTH:
                            yield None
                            continue
                        try:
                            sub = os.open(name, _FOLDER_READ, dir_fd=fd)
                        except OSError:
                            yield None  # replaced by a link or gone meanwhile
                            continue
                        stack.append((f"{prefix}{name}/", sub, depth + 1))
                    elif entry.is_file(follow_symlinks=False):
                        yield f"{prefix}{name}", fd, name
                    else:
                        yield None
            finally:
                os.close(fd)
    finally:
        for _, fd, _ in stack:
            os.close(fd)


def list_artifacts(folder: Path, cache: HashCache, limit: int = MAX_FILES) -> Listing:
    """Every regular file below `folder` of the folder's owner, with its size, sha256,
    modification time and ETag (each read from the file once open, so that all four
    describe one version); links, other kinds of file and others' files are left out. OSError (NOT_THERE among them) when the folder itself
    cannot be opened."""
    folder_fd = open_folder(folder)
    owner = os.fstat(folder_fd).st_uid
    files: list[ArtifactFile] = []
    skipped = 0
    truncated = False
    walk = _walk(folder_fd)
    try:
        for found in walk:
            if found is None:
                skipped += 1
                continue
            if len(files) >= limit:
                truncated = True
                break
            relative, fd, name = found
            try:
                handle = os.open(name, _FILE_READ, dir_fd=fd)
            except OSError:
                skipped += 1  # replaced by a link, or gone, since it was listed
                continue
            try:
                info = os.fstat(handle)
                if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
                    skipped += 1
                    continue
                key = (str(folder), relative, info.st_size, info.st_mtime_ns, info.st_ino)
                digest = cache.get(key)
                if digest is None:
                    digest = _sha256(handle)
                    cache.computed += 1
                    after = os.fstat(handle)
                    if (after.st_size, after.st_mtime_ns) == (info.st_size, info.st_mtime_ns):
                        cache.put(key, digest)  # not while it is being written
            finally:
                os.close(handle)
            files.append(ArtifactFile(relative, info.st_size, digest, info.st_mtime, etag_of(info)))
    finally:
        walk.close()
        os.close(folder_fd)
    files.sort(key=lambda f: f.path)
    return Listing(files, truncated, skipped)
