"""A job's artifacts as files, without a server: the paths a request may name, Range
headers, the folder's listing with hashes, and that nothing outside the folder is ever
opened (links, FIFOs, `..`)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from hub_service.jobs.artifact_files import (
    NOT_THERE,
    ArtifactPathError,
    HashCache,
    RangeNotSatisfiable,
    artifact_parts,
    content_disposition,
    etag_of,
    list_artifacts,
    open_artifact,
    open_folder,
    parse_range,
    range_applies,
    user_folder,
)

# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, parts",
    [
        ("adapter_model.safetensors", ("adapter_model.safetensors",)),
        ("checkpoints/step-10/model.bin", ("checkpoints", "step-10", "model.bin")),
        ("..hidden", ("..hidden",)),
        ("a b/é.json", ("a b", "é.json")),
        ("back\\slash", ("back\\slash",)),  # a name on Linux, not a separator
    ],
)
def test_paths_that_name_a_file_below_the_folder(path, parts):
    assert artifact_parts(path) == parts


@pytest.mark.parametrize(
    "path, words",
    [
        ("", "empty"),
        ("/etc/passwd", "relative"),
        ("..", "'..'"),
        ("../../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("./a", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\x00b", "NUL"),
        ("x" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),  # 256 bytes in UTF-8
        ("a/" * 2500, "longer than"),
    ],
)
def test_paths_that_could_leave_the_folder_are_refused(path, words):
    with pytest.raises(ArtifactPathError) as refused:
        artifact_parts(path)
    assert words in str(refused.value)


def test_user_folders_are_one_safe_name_and_distinct_for_distinct_users():
    assert user_folder("alice") == "alice"
    assert user_folder("jane.doe@example.org") == "jane.doe@example.org"
    assert user_folder("é") == "%C3%A9"
    assert user_folder("..") == "%2E."
    assert user_folder(".x") == "%2Ex"
    assert user_folder("a/b") == "a%2Fb"
    names = ["a.b", "a_b", "a-b", "a%2Eb", "a%b", "a b", "A", "a", "..", ".", "%2E", "a/b"]
    folders = [user_folder(n) for n in names]
    assert len(set(folders)) == len(names)
    for folder in folders:
        assert "/" not in folder and folder not in (".", "..", "") and "\x00" not in folder
    long = user_folder("x" * 1000)
    assert len(long) < 255 and long != user_folder("x" * 999)


# -- ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),  # more than the file: all of it
        ("bytes=90-1000", 100, (90, 99)),  # cut to the file
        ("bytes=99-99", 100, (99, 99)),
        ("BYTES = 5-6", 100, (5, 6)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file
        ("items=0-1", 100, None),  # another unit
        ("bytes=5-4", 100, None),  # invalid: ignored
        ("bytes=a-b", 100, None),
        ("bytes=5", 100, None),
        ("bytes=-", 100, None),
        ("bytes=0-" + "9" * 5000, 100, (0, 99)),  # a huge end is the end
        ("bytes=１-２", 100, None),  # full-width digits are not digits here
    ],
)
def test_single_byte_ranges(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header, size",
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=" + "9" * 5000 + "-", 100),
    ],
)
def test_ranges_outside_the_file_are_unsatisfiable(header, size):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_if_range_honours_a_range_only_for_the_same_version():
    etag, date = '"1-2-3"', "Tue, 01 Jul 2025 10:00:00 GMT"
    assert range_applies(None, etag, date)
    assert range_applies('"1-2-3"', etag, date)
    assert not range_applies('"1-2-4"', etag, date)
    assert not range_applies('W/"1-2-3"', etag, date)  # weak: never for ranges
    assert range_applies(date, etag, date)
    assert not range_applies("Tue, 01 Jul 2025 10:00:01 GMT", etag, date)


def test_content_disposition_is_an_attachment_with_a_safe_name():
    assert content_disposition("adapter.bin") == 'attachment; filename="adapter.bin"'
    odd = content_disposition('a"b\\c;d\r\n.txt')
    assert odd.startswith("attachment; filename=\"a_b_c_d__.txt\"; filename*=UTF-8''")
    assert "\r" not in odd and "\n" not in odd
    assert content_disposition("modèle.json").endswith("filename*=UTF-8''mod%C3%A8le.json")


# -- the folder --------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    """An artifacts folder as a job might leave it, with links and a FIFO pointing out."""
    root = tmp_path / "artifacts"
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (root / "metrics.json").write_bytes(b"{}")
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (root / "leak").symlink_to(outside)
    (root / "up").symlink_to(tmp_path)
    (root / "adapter" / "loop").symlink_to(root)
    os.mkfifo(root / "pipe")
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_listing_has_every_regular_file_with_size_and_hash_and_no_link(folder):
    cache = HashCache()
    listing = list_artifacts(folder, cache)
    paths = [f.path for f in listing.files]
    assert paths == ["adapter/adapter_config.json", "big.bin", "empty", "metrics.json"]
    for item in listing.files:
        path = folder / item.path
        assert item.size == path.stat().st_size
        assert item.sha256 == digest(path)
        assert item.modified == path.stat().st_mtime
        assert item.etag == etag_of(path.stat())
    assert listing.skipped == 4  # leak, up, loop, pipe
    assert listing.truncated is False
    assert cache.computed == 4


def test_hashes_are_computed_once_per_version_of_a_file(folder):
    cache = HashCache()
    list_artifacts(folder, cache)
    assert cache.computed == 4
    list_artifacts(folder, cache)
    assert cache.computed == 4  # all from the cache
    (folder / "metrics.json").write_bytes(b'{"loss": 0.5}')
    listing = list_artifacts(folder, cache)
    assert cache.computed == 5
    (metrics,) = [f for f in listing.files if f.path == "metrics.json"]
    assert metrics.sha256 == hashlib.sha256(b'{"loss": 0.5}').hexdigest()


def test_the_cache_keeps_the_most_recently_used():
    cache = HashCache(max_entries=2)
    cache.put(("a",), "1")
    cache.put(("b",), "2")
    assert cache.get(("a",)) == "1"  # a is now the most recent
    cache.put(("c",), "3")
    assert cache.get(("b",)) is None and cache.get(("a",)) == "1" and cache.get(("c",)) == "3"


def test_a_listing_stops_at_its_limit_and_says_so(folder):
    listing = list_artifacts(folder, HashCache(), limit=2)
    assert len(listing.files) == 2 and listing.truncated is True


def test_a_missing_folder_or_a_link_on_the_way_is_not_there(folder, tmp_path):
    for path in (tmp_path / "nothing", folder / "metrics.json", folder / "up" / "artifacts"):
        with pytest.raises(OSError) as failed:
            list_artifacts(path, HashCache())
        assert failed.value.errno in NOT_THERE
    (tmp_path / "linked").symlink_to(folder)
    with pytest.raises(OSError) as failed:
        open_folder(tmp_path / "linked")
    assert failed.value.errno in NOT_THERE


def test_only_regular_files_below_the_folder_open(folder):
    fd = open_folder(folder)
    try:
        handle, info = open_artifact(fd, ("adapter", "adapter_config.json"))
        try:
            assert os.read(handle, 100) == b'{"r": 8}' and info.st_size == 8
        finally:
            os.close(handle)
        for parts in (
            ("leak",),  # a link to a file outside
            ("up", "secret.txt"),  # through a link to a folder outside
            ("adapter", "loop", "metrics.json"),  # through a link back in: not either
            ("adapter",),  # a folder
            ("nothing",),
        ):
            with pytest.raises(OSError) as refused:
                open_artifact(fd, parts)
            assert refused.value.errno in NOT_THERE, parts
    finally:
        os.close(fd)


def test_a_fifo_is_refused_without_waiting_for_a_writer(folder):
    fd = open_folder(folder)
    outcome: list = []

    def try_it():
        try:
            open_artifact(fd, ("pipe",))
        except OSError as err:
            outcome.append(err.errno)

    worker = threading.Thread(target=try_it, daemon=True)
    worker.start()
    worker.join(5)
    os.close(fd)
    assert outcome == [errno.ENOENT]


def test_a_file_replaced_by_a_link_after_the_folder_was_opened_is_not_followed(folder):
    fd = open_folder(folder)
    try:
        (folder / "metrics.json").unlink()
        (folder / "metrics.json").symlink_to(folder.parent / "secret.txt")
        with pytest.raises(OSError) as refused:
            open_artifact(fd, ("metrics.json",))
        assert refused.value.errno == errno.ELOOP
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_a_file_of_another_owner_is_neither_listed_nor_opened(folder, tmp_path):
    # As a hard link to someone else's file would be (where protected hard links are off).
    (folder / "theirs.txt").write_text("not the job's")
    os.chown(folder / "theirs.txt", 4321, 4321)
    listing = list_artifacts(folder, HashCache())
    assert "theirs.txt" not in [f.path for f in listing.files] and listing.skipped == 5
    fd = open_folder(folder)
    try:
        with pytest.raises(OSError) as refused:
            open_artifact(fd, ("theirs.txt",))
        assert refused.value.errno == errno.ENOENT
    finally:
        os.close(fd)
    # The folder's owner decides: given to that owner, the folder's own files are not theirs.
    os.chown(folder, 4321, 4321)
    assert [f.path for f in list_artifacts(folder, HashCache()).files] == ["theirs.txt"]
