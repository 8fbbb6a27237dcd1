"""Job artifacts through a real hub (`thinkube hub`, jobs as processes on this machine): a
job writes files into $THINKUBE_ARTIFACTS_DIR, the service lists them with sizes and
hashes and serves each one (whole, by Range, by HEAD), `thinkube jobs download` fetches
them and resumes a cut-short file; links the job planted never lead out of its folder,
another person sees nothing, a running job's artifacts are not complete yet."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import textwrap
from urllib.parse import urljoin

import httpx
import psutil
import pytest
import pytest_asyncio

from tests.jobs.test_jobs_clients import page_token, thinkube
from tests.local.hubproc import local_hub
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICE = "services/thinkube-resources/"
BIG_SIZE = 3 * 1024 * 1024 + 123


def big_bytes() -> bytes:
    return random.Random(17).randbytes(BIG_SIZE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory):
    config = tmp_path_factory.mktemp("artifacts-config") / "admins.py"
    config.write_text(
        "c = get_config()  # noqa: F821\n"
        "c.JupyterHub.load_groups = {'jobs-admins': {'users': ['carol']}}\n"
    )
    async with local_hub(tmp_path_factory.mktemp("artifacts-hub"), config=config) as hub:
        yield hub


async def client_of(hub, user: str) -> httpx.AsyncClient:
    token = await page_token(hub, user)
    client = httpx.AsyncClient(
        base_url=urljoin(hub.url, SERVICE), headers={"Authorization": f"token {token}"}, timeout=60
    )
    client.token = token
    return client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(hub):
    async with await client_of(hub, "alice") as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bob(hub):
    async with await client_of(hub, "bob") as client:
        yield client


async def submit(client, text: str, **options) -> dict:
    body = {"script": textwrap.dedent(text).lstrip(), "expected_time": 60, **options}
    response = await client.post("api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def finished(client, job_id: str) -> dict:
    async def ended():
        view = (await client.get(f"api/v1/jobs/{job_id}")).json()
        return view if view["status"] not in ("queued", "running") else None

    return await eventually(ended, within=60, interval=0.2)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def written(hub, alice):
    """A completed job of alice's that wrote a few files, one of a few MB, and planted links
    out of its folder: to the service's own token (only root may read it) and to `/`."""
    token_file = hub.data_dir / "service_token"
    job = await submit(
        alice,
        f"""
        import os, pathlib, random
        out = pathlib.Path(os.environ["THINKUBE_ARTIFACTS_DIR"])
        (out / "adapter").mkdir()
        (out / "adapter" / "adapter_config.json").write_text('{{"r": 8, "alpha": 16}}')
        (out / "metrics.json").write_text('{{"loss": 0.25}}')
        (out / "big.bin").write_bytes(random.Random(17).randbytes({BIG_SIZE}))
        (out / "naïve name.txt").write_text("unicode")
        os.symlink({str(token_file)!r}, out / "token")
        os.symlink("/", out / "up")
        print("wrote", out)
        """,
    )
    view = await finished(alice, job["id"])
    assert view["status"] == "completed", (await alice.get(f"api/v1/jobs/{job['id']}/result")).text
    return job["id"], token_file.read_text().strip()


EXPECTED = {
    "adapter/adapter_config.json": b'{"r": 8, "alpha": 16}',
    "big.bin": None,  # big_bytes()
    "metrics.json": b'{"loss": 0.25}',
    "naïve name.txt": b"unicode",
}


async def test_the_list_has_every_file_with_its_size_and_hash(alice, written):
    job_id, _ = written
    response = await alice.get(f"api/v1/jobs/{job_id}/artifacts")
    assert response.status_code == 200, response.text
    listing = response.json()
    assert (listing["job"], listing["status"], listing["complete"]) == (job_id, "completed", True)
    assert [f["path"] for f in listing["files"]] == sorted(EXPECTED)
    for item in listing["files"]:
        content = EXPECTED[item["path"]] or big_bytes()
        assert item["size"] == len(content), item
        assert item["sha256"] == sha256(content), item
        assert item["modified"].endswith("Z") and item["etag"].startswith('"')
    assert listing["count"] == 4
    assert listing["total_bytes"] == sum(len(c or big_bytes()) for c in EXPECTED.values())
    assert listing["skipped"] == 2  # the two links, never followed
    assert listing["truncated"] is False


async def test_a_download_matches_byte_for_byte_and_says_what_it_is(alice, written):
    job_id, _ = written
    response = await alice.get(f"api/v1/jobs/{job_id}/artifacts/big.bin")
    assert response.status_code == 200
    assert response.content == big_bytes()
    headers = response.headers
    assert headers["content-length"] == str(BIG_SIZE)
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == 'attachment; filename="big.bin"'
    assert headers["x-content-type-options"] == "nosniff"
    listing = (await alice.get(f"api/v1/jobs/{job_id}/artifacts")).json()
    (big,) = [f for f in listing["files"] if f["path"] == "big.bin"]
    assert headers["etag"] == big["etag"]

    nested = await alice.get(f"api/v1/jobs/{job_id}/artifacts/adapter/adapter_config.json")
    assert nested.content == EXPECTED["adapter/adapter_config.json"]
    odd = await alice.get(f"api/v1/jobs/{job_id}/artifacts/na%C3%AFve%20name.txt")
    assert odd.content == b"unicode"
    assert odd.headers["content-disposition"] == (
        "attachment; filename=\"na_ve name.txt\"; filename*=UTF-8''na%C3%AFve%20name.txt"
    )
    again = await alice.get(
        f"api/v1/jobs/{job_id}/artifacts/big.bin", headers={"If-None-Match": big["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "asked, first, last",
    [
        ("bytes=100-199", 100, 199),
        ("bytes=3000000-", 3000000, BIG_SIZE - 1),
        ("bytes=-500", BIG_SIZE - 500, BIG_SIZE - 1),
        ("bytes=0-0", 0, 0),
        (f"bytes={BIG_SIZE - 10}-{BIG_SIZE * 2}", BIG_SIZE - 10, BIG_SIZE - 1),
    ],
)
async def test_a_range_gives_the_exact_slice(alice, written, asked, first, last):
    job_id, _ = written
    path = f"api/v1/jobs/{job_id}/artifacts/big.bin"
    response = await alice.get(path, headers={"Range": asked})
    assert response.status_code == 206, response.text
    assert response.content == big_bytes()[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{BIG_SIZE}"
    assert response.headers["content-length"] == str(last - first + 1)


async def test_ranges_outside_the_file_and_other_versions(alice, written):
    job_id, _ = written
    path = f"api/v1/jobs/{job_id}/artifacts/big.bin"
    outside = await alice.get(path, headers={"Range": f"bytes={BIG_SIZE}-"})
    assert outside.status_code == 416
    assert outside.headers["content-range"] == f"bytes */{BIG_SIZE}"
    assert "outside the file" in outside.json()["error"]
    # If-Range naming another version: the whole (current) file, not a slice of it.
    other = await alice.get(path, headers={"Range": "bytes=0-9", "If-Range": '"1-2-3"'})
    assert other.status_code == 200 and len(other.content) == BIG_SIZE
    etag = other.headers["etag"]
    same = await alice.get(path, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == big_bytes()[:10]
    # Several ranges are not taken: the whole file.
    several = await alice.get(path, headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and len(several.content) == BIG_SIZE


async def test_head_says_the_size_without_the_body(alice, written):
    job_id, _ = written
    path = f"api/v1/jobs/{job_id}/artifacts/big.bin"
    head = await alice.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(BIG_SIZE)
    assert head.headers["accept-ranges"] == "bytes" and head.headers["etag"]
    part = await alice.head(path, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes 10-19/{BIG_SIZE}"
    missing = await alice.head(f"api/v1/jobs/{job_id}/artifacts/nothing")
    assert missing.status_code == 404


async def raw_get(port: int, path: str, token: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client or proxy cleaning up its dots), straight to
    the service's port; the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: token {token}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "raw, status",
    [
        ("token", 404),  # a link to the service's own token
        ("up/etc/passwd", 404),  # through a link to /
        ("up", 404),
        ("../../../etc/passwd", 400),
        ("%2e%2e/%2e%2e/%2e%2e/etc/passwd", 400),  # encoded ..
        ("..%2F..%2Fetc%2Fpasswd", 400),
        ("%2Fetc%2Fpasswd", 400),  # absolute
        ("/etc/passwd", 400),
        ("adapter%00/adapter_config.json", 400),  # NUL
        ("adapter//adapter_config.json", 400),
        ("adapter/./adapter_config.json", 400),
        ("%252e%252e/etc/passwd", 404),  # encoded twice: a name, that is not there
        ("adapter", 404),  # a folder is not a file
        ("%ff", 400),  # not UTF-8
    ],
)
async def test_paths_that_escape_the_folder_are_refused(hub, alice, written, raw, status):
    job_id, service_token = written
    path = f"/{SERVICE}api/v1/jobs/{job_id}/artifacts/{raw}"
    code, body = await raw_get(hub.settings["service_port"], path, alice.token)
    assert code == status, (raw, body)
    assert json.loads(body)["error"]
    if raw == "%ff":
        return  # configurable-http-proxy answers 500 itself to a path that is not UTF-8
    # Through the hub's proxy, which (as the client) may clean the path up first: what is
    # left of it is answered, never with anything from outside the folder.
    response = await alice.send(alice.build_request("GET", httpx.URL(hub.url.rstrip("/") + path)))
    assert response.status_code in (200, 400, 404), (raw, response.text)
    for text in (body.decode(errors="replace"), response.text):
        assert service_token not in text and "root:" not in text


async def test_another_person_gets_nothing_and_a_jobs_admin_gets_it(hub, bob, written):
    job_id, _ = written
    for path in ("artifacts", "artifacts/big.bin"):
        response = await bob.get(f"api/v1/jobs/{job_id}/{path}")
        assert response.status_code == 404
        assert response.json()["error"] == f"no job '{job_id}' of yours"
    async with await client_of(hub, "carol") as admin:
        listed = await admin.get(f"api/v1/jobs/{job_id}/artifacts")
        assert listed.status_code == 200 and listed.json()["count"] == 4
        one = await admin.get(f"api/v1/jobs/{job_id}/artifacts/metrics.json")
        assert one.content == EXPECTED["metrics.json"]


async def test_a_running_job_answers_409_and_partial_lists_what_it_has_so_far(alice):
    job = await submit(
        alice,
        """
        import os, pathlib, time
        out = pathlib.Path(os.environ["THINKUBE_ARTIFACTS_DIR"])
        (out / "checkpoint-1.txt").write_text("step 1")
        print("checkpoint written", flush=True)
        time.sleep(60)
        """,
    )
    job_id = job["id"]
    try:

        async def written_so_far():
            response = await alice.get(
                f"api/v1/jobs/{job_id}/artifacts", params={"partial": "true"}
            )
            return response if response.status_code == 200 else None

        partial = await eventually(written_so_far, within=30, interval=0.2)
        listing = partial.json()
        assert listing["status"] == "running" and listing["complete"] is False
        assert [f["path"] for f in listing["files"]] == ["checkpoint-1.txt"]
        for path in ("artifacts", "artifacts/checkpoint-1.txt"):
            refused = await alice.get(f"api/v1/jobs/{job_id}/{path}")
            assert refused.status_code == 409
            assert "still running" in refused.json()["error"]
        got = await alice.get(
            f"api/v1/jobs/{job_id}/artifacts/checkpoint-1.txt", params={"partial": "true"}
        )
        assert got.content == b"step 1"
    finally:
        await alice.post(f"api/v1/jobs/{job_id}/cancel")
    # Cancelled: what it wrote is kept, and now complete.
    kept = await alice.get(f"api/v1/jobs/{job_id}/artifacts")
    assert kept.status_code == 200 and kept.json()["complete"] is True


async def test_jobs_without_artifacts_say_why(alice):
    failed = await submit(alice, "raise SystemExit(5)\n")
    await finished(alice, failed["id"])
    response = await alice.get(f"api/v1/jobs/{failed['id']}/artifacts")
    assert response.status_code == 404
    assert response.json()["error"] == (
        f"job '{failed['id']}' (failed, exit code 5) left no artifacts (a job keeps what it "
        "writes into the folder $THINKUBE_ARTIFACTS_DIR names)"
    )
    file = await alice.get(f"api/v1/jobs/{failed['id']}/artifacts/model.bin")
    assert file.status_code == 404
    # Queued behind a job that holds every core, then cancelled: it never ran.
    cores = psutil.cpu_count()
    holder = await submit(alice, "import time\ntime.sleep(120)\n", cpu=cores)
    try:
        await eventually(lambda: _is_running(alice, holder["id"]), within=30, interval=0.1)
        waiting = await submit(alice, "print('never')\n", cpu=cores)
        assert waiting["status"] == "queued"
        queued = await alice.get(f"api/v1/jobs/{waiting['id']}/artifacts")
        assert queued.status_code == 409 and "has not started" in queued.json()["error"]
        await alice.post(f"api/v1/jobs/{waiting['id']}/cancel")
        never = await alice.get(f"api/v1/jobs/{waiting['id']}/artifacts")
        assert never.status_code == 404
        assert never.json()["error"] == f"job '{waiting['id']}' never ran (cancelled): no artifacts"
    finally:
        await alice.post(f"api/v1/jobs/{holder['id']}/cancel")


async def _is_running(client, job_id: str) -> bool:
    return (await client.get(f"api/v1/jobs/{job_id}")).json()["status"] == "running"


async def test_the_cli_lists_downloads_and_resumes_a_cut_short_file(hub, alice, written, tmp_path):
    job_id, _ = written
    token = alice.token
    code, out, err = await thinkube(hub, token, "jobs", "artifacts", job_id)
    assert code == 0, err
    assert f"big.bin  3.0 MiB  sha256:{sha256(big_bytes())[:16]}" in out
    assert "4 file(s)" in err

    target = tmp_path / "out"
    code, out, err = await thinkube(hub, token, "jobs", "download", job_id, str(target))
    assert code == 0, err
    assert out.count("fetched: ") == 4 and "sha256 checked" in out
    assert (target / "big.bin").read_bytes() == big_bytes()
    for name, content in EXPECTED.items():
        assert (target / name).read_bytes() == (content or big_bytes())

    # Cut short, as a broken download leaves it: resumed, only the rest fetched.
    (target / "big.bin").write_bytes(big_bytes()[:1_000_000])
    code, out, err = await thinkube(hub, token, "jobs", "download", job_id, str(target))
    assert code == 0, err
    assert f"resumed: {target / 'big.bin'}" in out
    assert out.count("already there: ") == 3
    assert (target / "big.bin").read_bytes() == big_bytes()

    # Cut short with wrong bytes: the resumed file fails its hash and is fetched whole.
    (target / "big.bin").write_bytes(b"x" * 1000)
    code, out, err = await thinkube(hub, token, "jobs", "download", job_id, str(target))
    assert code == 0, err
    assert f"fetched: {target / 'big.bin'}" in out
    assert (target / "big.bin").read_bytes() == big_bytes()

    code, out, err = await thinkube(hub, token, "jobs", "download", job_id, str(target))
    assert code == 0 and out.count("already there: ") == 4

    # A job with none: the reason, no traceback.
    failed = await submit(alice, "raise SystemExit(2)\n")
    await finished(alice, failed["id"])
    code, out, err = await thinkube(hub, token, "jobs", "download", failed["id"], str(target))
    assert code != 0 and "left no artifacts" in err and "Traceback" not in err


async def test_the_python_client_lists_and_downloads(hub, alice, written, tmp_path):
    from thinkube_core import jobs

    job_id, _ = written

    def use_it():
        client = jobs.Client(urljoin(hub.url, SERVICE), alice.token)
        try:
            job = client.get(job_id)
            files = job.artifacts()
            done = job.download(tmp_path / "py")
            return files, done
        finally:
            client.close()

    files, done = await asyncio.to_thread(use_it)
    assert [f["path"] for f in files] == sorted(EXPECTED)
    assert sorted((f.name, f.how) for f in done) == [(n, "fetched") for n in sorted(EXPECTED)]
    assert (tmp_path / "py" / "big.bin").read_bytes() == big_bytes()
