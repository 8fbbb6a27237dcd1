"""Hostile input at the service's edge, through a real hub + proxy + the managed service (and
ThinkubeSpawner's form, which reads the service): nothing a caller sends gets a 5xx or takes
the service or the spawn page down.

- a lone surrogate in a catalog entry is refused, and one an older version stored is served
  repaired: the spawn page keeps rendering;
- a body is never read before the request is authenticated and within the route's limit:
  large bodies, direct and through the proxy, leave the service's memory where it was;
- deep nesting, huge numbers, huge strings, other media types and charsets, repeated keys
  are refused with 4xx naming the field, and the catalog and availability answers stay small
  valid UTF-8 JSON;
- a 405 says Allow, HEAD and OPTIONS on a write route say nothing of the write scope;
- odd paths, query arguments and headers get 4xx, never 5xx.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import pytest_asyncio

from tests.hub_fixtures import (
    ACCESS_SCOPE,
    IMAGE_WRITERS_ROLE,
    IMAGES_WRITE_SCOPE,
    SPAWNER_HUB_ROLES,
)
from tests.kubesim.generator import make_node

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENTRY_BODY_LIMIT = 64 * 1024  # what the service documents for PUT api/v1/images/{name}
JSON = {"Content-Type": "application/json"}
WRITE_SCOPE = IMAGES_WRITE_SCOPE


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, module_hub_factory):
    sim = await module_kubesim()
    sim.load([make_node("cpu-1", 8, 32)])
    # ThinkubeSpawner's form reads the service's availability answer (the spawn page)
    config = {
        "JupyterHub": {"spawner_class": "thinkube", "load_roles": SPAWNER_HUB_ROLES},
        "ThinkubeSpawner": {"k8s_api_host": sim.url, "namespace": "default"},
    }
    return await module_hub_factory(sim=sim, config=config)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def writer(hub):
    return hub.client(
        hub.token("builder", [ACCESS_SCOPE, WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE])
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reader(hub):
    return hub.client(hub.token("reader", [ACCESS_SCOPE]))


async def spawn_page(hub, user: str) -> httpx.Response:
    browser = await hub.login(user)
    return await browser.get(urljoin(hub.url, "hub/spawn"), follow_redirects=True)


async def read_answers(client) -> dict[str, bytes]:
    """The catalog list and the availability answer, as bytes: each must be valid UTF-8
    JSON (json.loads of the decoded text, strictly)."""
    answers = {}
    for path in ("api/v1/images", "api/v1/images/jupyter", "api/v1/availability"):
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        text = response.content.decode("utf-8")  # strict: raises on invalid UTF-8
        document = json.loads(text)
        # no lone surrogate hides behind a \uXXXX escape either
        json.dumps(document, ensure_ascii=False).encode("utf-8")
        answers[path] = response.content
    return answers


# -- finding: a lone surrogate took the spawn page down ---------------------------------------


async def test_a_lone_surrogate_is_refused_and_the_spawn_page_renders(hub, writer):
    body = b'{"image": "ubuntu:24.04", "description": "\\ud800"}'
    response = await writer.put("api/v1/images/surrogate", content=body, headers=JSON)
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "error": "description: is not valid Unicode (a lone surrogate)",
        "field": "description",
    }
    # in a key too, and in a tag
    for body, field in (
        (b'{"image": "ubuntu:24.04", "metadata": {"\\udfff": 1}}', "metadata"),
        (b'{"image": "ubuntu:24.04", "tags": ["ok", "\\ud83d"]}', "tags.1"),
    ):
        response = await writer.put("api/v1/images/surrogate", content=body, headers=JSON)
        assert (response.status_code, response.json()["field"]) == (400, field)
    assert (await writer.get("api/v1/images/surrogate")).status_code == 404
    page = await spawn_page(hub, "alice")
    assert page.status_code == 200, page.text[:500]
    assert "Data science (SciPy)" in page.text


async def test_an_entry_an_older_version_stored_is_served_repaired(hub, writer, reader):
    """A row written before these rules (here straight into the catalog's SQLite file, as an
    older version wrote it): its text is repaired on every read, and every user's spawn page
    renders; an entry whose values break the rules is withheld."""
    spec = {
        "display_name": "Legacy \ud800 image",
        "description": "made by an older version \udc00" + "x" * 5_000_000,
        "image": "ubuntu:24.04",
        "tags": ["old", "\ud83d"],
        "pull_policy": "IfNotPresent",
        "metadata": {"gpu_required": False, "cpu_limit": 2, "mem_limit": "1.5Gi"},
    }
    broken = {**spec, "metadata": {"cpu_limit": 1e308}}
    with sqlite3.connect(hub.workdir / "catalog.sqlite") as db:
        for name, row in (("legacy", spec), ("legacy-broken", broken)):
            db.execute(
                "INSERT INTO images (name, kind, is_default, spec, created_at, updated_at) "
                "VALUES (?, 'jupyter', 0, ?, '2024-01-01', '2024-01-01')",
                (name, json.dumps(row)),  # ensure_ascii: the surrogates as \ud800 escapes
            )
    try:
        # rows written past the service reach its availability answer within 10 s
        for _ in range(150):
            answers = await read_answers(reader)
            if b"Legacy" in answers["api/v1/availability"]:
                break
            await asyncio.sleep(0.1)
        entry = (await reader.get("api/v1/images/legacy")).json()
        assert entry["display_name"] == "Legacy \ufffd image"
        assert entry["description"].startswith("made by an older version \ufffd")
        assert len(entry["description"]) == 2000
        assert entry["tags"] == ["old", "\ufffd"]
        assert entry["metadata"]["mem_limit"] == "1536Mi"
        assert (await reader.get("api/v1/images/legacy-broken")).status_code == 404
        assert all(len(answer) < 64 * 1024 for answer in answers.values())
        assert b"legacy-broken" not in answers["api/v1/availability"]
        for user in ("bob", "carol"):
            page = await spawn_page(hub, user)
            assert page.status_code == 200, page.text[:500]
            assert "Legacy \ufffd image" in page.text
        log = hub.service_log()
        assert "stored image 'legacy' breaks the catalog's rules" in log
        assert "stored image 'legacy-broken' is withheld: metadata.cpu_limit:" in log
    finally:
        assert (await writer.delete("api/v1/images/legacy")).status_code == 204
        assert (await writer.delete("api/v1/images/legacy-broken")).status_code == 204


# -- finding: bodies read before authentication, up to 100 MB --------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def raw_request(
    url: str,
    method: str,
    headers: dict[str, str],
    body_size: int = 0,
    chunked: bool = False,
    send: bool = True,
) -> tuple[int, dict[str, str], bytes, int]:
    """Send a request with a body of `body_size` spaces (declared, and sent unless not
    `send`) on a raw connection while reading the answer as it comes (as a proxy does);
    returns the status, the headers, the body and how much of the body was sent before the
    answer was complete."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
    lines.append(f"Host: {parts.netloc}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body_size:
        lines.append(f"Content-Length: {body_size}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        piece = b" " * 65536
        try:
            while send and sent < body_size:
                size = min(len(piece), body_size - sent)
                data = piece[:size]
                writer.write(f"{size:x}\r\n".encode() + data + b"\r\n" if chunked else data)
                await writer.drain()
                sent += size
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the other side closed: the rest is not wanted

    sending = asyncio.create_task(send_body())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                answer_headers[name.strip().lower()] = value.strip()
        length = int(answer_headers.get("content-length", "0"))
        content = await asyncio.wait_for(reader.readexactly(length), 60) if length else b""
        sent_when_answered = sent
    finally:
        sending.cancel()
        writer.close()
    return int(status_line.split()[1]), answer_headers, content, sent_when_answered


NINETY_MB = 90 * 1000 * 1000


@pytest.mark.parametrize("through", ["service port", "hub's proxy"])
async def test_large_bodies_are_refused_without_being_kept(hub, through):
    """Four concurrent unauthenticated 90 MB PUTs (and four of a writer, and a chunked one
    with no declared length) are refused; the service's memory stays where it was (it grew
    by about 400 MB before: the bodies were read whole, before the token was looked at)."""
    base = hub.service_direct_url if through == "service port" else hub.service_url
    url = urljoin(base, "api/v1/images/huge")
    token = hub.token("big-writer", [ACCESS_SCOPE, WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE])
    authorized = {"Authorization": f"token {token}", **JSON}
    before = rss_mib(hub.service_pid)
    answers = await asyncio.gather(
        *[raw_request(url, "PUT", JSON, NINETY_MB) for _ in range(4)],
        *[raw_request(url, "PUT", authorized, NINETY_MB) for _ in range(4)],
        raw_request(url, "PUT", authorized, 3 * ENTRY_BODY_LIMIT, chunked=True),
    )
    grown = rss_mib(hub.service_pid) - before
    statuses = [status for status, *_ in answers]
    assert statuses == [401] * 4 + [413] * 5
    for status, headers, content, _ in answers:
        assert headers["content-type"] == "application/json"
        document = json.loads(content)
        assert document["status"] == status
        if status == 413:
            assert document == {
                "status": 413,
                "error": "the body is larger than this route takes (65536 bytes)",
                "field": None,
            }
    assert grown < 40, f"the service grew by {grown:.0f} MiB"
    # and it still answers, on a connection the refusals left usable
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"token {token}"}) as c:
        assert (await c.get("api/v1/images/scipy")).status_code == 200
        assert (await c.get("api/v1/images/huge")).status_code == 404


async def test_a_client_waiting_for_100_continue_gets_the_refusal_instead(hub):
    """It sends its body after `100 Continue` only: it gets the 401 instead, at once, and
    the connection closes (the body it announced is not coming)."""
    status, headers, content, _ = await raw_request(
        urljoin(hub.service_direct_url, "api/v1/images/huge"),
        "PUT",
        {**JSON, "Expect": "100-continue"},
        NINETY_MB,
        send=False,
    )
    assert status == 401
    assert headers["connection"] == "close"
    assert json.loads(content)["status"] == 401


async def test_a_body_on_a_route_that_takes_none_is_413(hub, reader):
    response = await reader.request("GET", "api/v1/cluster/summary", content=b"x" * 10)
    assert response.status_code == 413
    assert response.json() == {
        "status": 413,
        "error": "GET here takes no body",
        "field": None,
    }


# -- findings: hostile bodies and values ------------------------------------------------------


HOSTILE = [
    # (label, body as sent, Content-Type, status, field, part of the error)
    (
        "nested 100000 deep",
        b"[" * 100_000,
        "application/json",
        413,
        None,
        "larger than this route takes",
    ),
    (
        "nested 20000 deep",
        b"[" * 20_000 + b"]" * 20_000,
        "application/json",
        400,
        None,
        "nests arrays and objects more than 16 deep",
    ),
    (
        "a 4000-digit cpu_limit",
        b'{"image": "u:1", "metadata": {"cpu_limit": ' + b"9" * 4000 + b"}}",
        "application/json",
        400,
        "metadata.cpu_limit",
        "out of range",
    ),
    (
        "a 10 MB description",
        json.dumps({"image": "u:1", "description": "x" * 10_000_000}).encode(),
        "application/json",
        413,
        None,
        "larger than this route takes",
    ),
    (
        "a 2001-character description",
        json.dumps({"image": "u:1", "description": "x" * 2001}).encode(),
        "application/json",
        400,
        "description",
        "at most 2000 characters",
    ),
    (
        "cpu_limit 1e308",
        b'{"image": "u:1", "metadata": {"cpu_limit": 1e308}}',
        "application/json",
        400,
        "metadata.cpu_limit",
        "from 0.001 to 4096",
    ),
    (
        "cpu_limit 1e-300",
        b'{"image": "u:1", "metadata": {"cpu_limit": 1e-300}}',
        "application/json",
        400,
        "metadata.cpu_limit",
        "from 0.001 to 4096",
    ),
    (
        "cpu_limit 1e400",
        b'{"image": "u:1", "metadata": {"cpu_limit": 1e400}}',
        "application/json",
        400,
        "metadata.cpu_limit",
        "not a finite number",
    ),
    (
        "cpu_limit NaN",
        b'{"image": "u:1", "metadata": {"cpu_limit": NaN}}',
        "application/json",
        400,
        None,
        "NaN is not a JSON number",
    ),
    (
        'mem_limit "1e100"',
        b'{"image": "u:1", "metadata": {"mem_limit": "1e100"}}',
        "application/json",
        400,
        "metadata.mem_limit",
        "from 1 byte to 1Pi",
    ),
    (
        'a full-width digit "４" as the cpu_limit',
        '{"image": "u:1", "metadata": {"cpu_limit": "４"}}'.encode(),
        "application/json",
        400,
        "metadata.cpu_limit",
        "must be a number of cores",
    ),
    (
        'a full-width digit in mem_limit "４Gi"',
        '{"image": "u:1", "metadata": {"mem_limit": "４Gi"}}'.encode(),
        "application/json",
        400,
        "metadata.mem_limit",
        "not a Kubernetes quantity",
    ),
    (
        "text/plain",
        b'{"image": "u:1"}',
        "text/plain",
        415,
        None,
        "Content-Type: application/json",
    ),
    (
        "no Content-Type",
        b'{"image": "u:1"}',
        None,
        415,
        None,
        "Content-Type: application/json",
    ),
    (
        "UTF-16, said",
        '{"image": "u:1"}'.encode("utf-16"),
        "application/json; charset=utf-16",
        415,
        None,
        "must be UTF-8",
    ),
    (
        "UTF-16, unsaid",
        '{"image": "u:1"}'.encode("utf-16"),
        "application/json",
        400,
        None,
        "not UTF-8",
    ),
    (
        "a key twice",
        b'{"image": "u:1", "image": "debian:12"}',
        "application/json",
        400,
        "image",
        "appears more than once",
    ),
    (
        "an empty kind and display name",
        b'{"image": "u:1", "kind": "", "display_name": ""}',
        "application/json",
        400,
        "display_name",
        "must not be empty",
    ),
    (
        "a control character in the display name",
        b'{"image": "u:1", "display_name": "a\\u0000b"}',
        "application/json",
        400,
        "display_name",
        "control characters",
    ),
    (
        "33 tags",
        json.dumps({"image": "u:1", "tags": [f"t{n}" for n in range(33)]}).encode(),
        "application/json",
        400,
        "tags",
        "at most 32 tags",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field", "says"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
async def test_hostile_bodies_get_4xx_naming_the_field(
    hub, writer, body, content_type, status, field, says
):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await writer.put("api/v1/images/hostile", content=body, headers=headers)
    assert response.status_code == status, response.text[:300]
    answer = response.json()
    assert answer["status"] == status
    assert answer["field"] == field
    assert says in answer["error"]
    if field:
        assert answer["error"].startswith(f"{field}: ")
    assert len(response.content) < 1024  # the value is not echoed back whole
    assert (await writer.get("api/v1/images/hostile")).status_code == 404


async def test_after_every_hostile_value_the_answers_are_small_valid_utf8_json(hub, writer, reader):
    """Each hostile value above, planted through the API, changes nothing: the catalog list
    and the availability answer are the same small, valid UTF-8 JSON before and after, and
    the spawn page renders."""
    before = await read_answers(reader)
    for _, body, content_type, *_ in HOSTILE:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await writer.put("api/v1/images/planted", content=body, headers=headers)
        assert 400 <= response.status_code < 500
    after = await read_answers(reader)
    assert after["api/v1/images"] == before["api/v1/images"]
    assert after["api/v1/images/jupyter"] == before["api/v1/images/jupyter"]
    assert (
        json.loads(after["api/v1/availability"])["images"]
        == json.loads(before["api/v1/availability"])["images"]
    )
    assert all(len(answer) < 64 * 1024 for answer in after.values())
    assert (await spawn_page(hub, "dave")).status_code == 200


# -- finding: 405 without Allow; HEAD and OPTIONS told a reader about the write scope ---------


ROUTES = {
    "": "GET",
    "api/v1/health": "GET",
    "api/v1/ready": "GET",
    "api/v1/cluster/resources": "GET",
    "api/v1/cluster/resources/cpu-1": "GET",
    "api/v1/cluster/summary": "GET",
    "api/v1/availability": "GET",
    "api/v1/cloud/offers": "GET",
    "api/v1/images": "GET",
    "api/v1/images/jupyter": "GET",
    "api/v1/images/scipy": "GET, PUT, DELETE",
    "api/v1/openapi.json": "GET",
    "api/v1/docs": "GET",
    "api/v1/docs/docs.js": "GET",
    "metrics": "GET",
}


@pytest.mark.parametrize("path", list(ROUTES))
async def test_a_method_a_route_does_not_take_is_405_with_allow(hub, writer, path):
    allowed = ROUTES[path].split(", ")
    for method in ("HEAD", "OPTIONS", "POST", "PATCH", "PUT", "DELETE", "TRACE"):
        if method in allowed:
            continue
        response = await writer.request(method, path)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == ROUTES[path]
        if method != "HEAD":
            assert response.json()["error"].startswith(f"{method} is not a method of this route")


async def test_head_and_options_on_a_write_route_say_nothing_of_the_write_scope(hub, reader):
    for method in ("HEAD", "OPTIONS"):
        response = await reader.request(method, "api/v1/images/scipy")
        assert response.status_code == 405
        assert WRITE_SCOPE not in response.text
        assert all(WRITE_SCOPE not in value for value in response.headers.values())
    # the write itself still says which scope it needs
    response = await reader.put("api/v1/images/scipy", json={"image": "u:1"})
    assert response.status_code == 403
    assert response.json()["error"] == f"this needs the scope {WRITE_SCOPE}"


async def test_the_served_document_refuses_what_the_service_refuses(hub, reader):
    document = (await reader.get("api/v1/openapi.json")).json()
    schemas = document["components"]["schemas"]
    entry = schemas["ImageInput"]["properties"]
    assert "name" not in entry  # accepted when it is the URL's, undocumented
    for field in ("kind", "display_name"):
        assert entry[field]["minLength"] == 1
    assert schemas["Image"]["properties"]["name"]["minLength"] == 1
    name = document["paths"]["/api/v1/images/{name}"]["parameters"][0]["schema"]
    assert name["minLength"] == 1
    assert set(document["paths"]["/api/v1/images/{name}"]["put"]["responses"]) >= {
        "400",
        "409",
        "413",
        "415",
    }


async def test_a_long_name_in_the_url_is_not_echoed_back_whole(hub, reader):
    for path in ("api/v1/cluster/resources/", "api/v1/images/"):
        response = await reader.get(path + "n" * 4000)
        assert response.status_code == 404
        assert len(response.content) < 300
        assert response.json()["error"].endswith("...")


# -- no request input gets a 5xx --------------------------------------------------------------


# configurable-http-proxy (5.2) answers 500 itself to a path whose percent-encoding is not
# UTF-8, before any service sees it: those go to the service's port alone.
NOT_UTF8_PATHS = ["api/v1/images/%ff", "api/v1/images/%ed%a0%80", "api/v1/nothing/%ff/here"]
ODD_REQUESTS = [
    # (method, path and query as sent, extra headers)
    ("GET", "api/v1/images/%ff", {}),
    ("GET", "api/v1/images/%00", {}),
    ("PUT", "api/v1/images/%ed%a0%80", {}),  # a surrogate, percent-encoded
    ("GET", "api/v1/cluster/resources/" + "n" * 4000, {}),
    ("GET", "api/v1/cluster/resources/%2e%2e", {}),
    ("GET", "api/v1/cloud/offers?min_vram_gb=%ef%bc%94", {}),  # a full-width 4
    ("GET", "api/v1/cloud/offers?min_vram_gb=%ff", {}),
    ("GET", "api/v1/cloud/offers?max_price_per_hour=1e999&gpu=" + "x" * 5000, {}),
    ("GET", "api/v1/cloud/offers?spot=%00", {}),
    ("GET", "?q=%ff&page=%ef%bc%91&gpu=\u00e9", {"Accept": "text/html"}),
    ("GET", "api/v1/cluster/resources", {"If-None-Match": "\u00e9\u00ff"}),
    ("GET", "api/v1/availability", {"If-None-Match": '"' + "x" * 8000 + '"'}),
    ("GET", "api/v1/images", {"Cookie": "service-thinkube-resources=garbage; _xsrf=\u00ff"}),
    ("GET", "api/v1/images", {"Authorization": "token " + "\u00ff" * 100}),
    ("GET", "api/v1/images", {"Authorization": "Bearer"}),
    ("GET", "oauth_callback?code=bogus&state=bogus", {}),
    ("GET", "oauth_callback?error=%ff", {}),
    ("POST", "oauth_callback", {"Content-Length": "5"}),
    ("PROPFIND", "api/v1/images", {}),
    ("GET", "api/v1/nothing/%ff/here", {}),
]


@pytest.mark.parametrize("through", ["service port", "hub's proxy"])
async def test_odd_paths_queries_and_headers_get_no_5xx(hub, writer, through):
    base = hub.service_direct_url if through == "service port" else hub.service_url
    token = writer.headers["Authorization"]
    for method, path, headers in ODD_REQUESTS:
        if through == "hub's proxy" and path in NOT_UTF8_PATHS:
            continue
        headers = {"Authorization": token, **headers}
        body = 5 if headers.get("Content-Length") == "5" else 0
        headers.pop("Content-Length", None)
        status, answer_headers, _, _ = await raw_request(
            base + path, method, headers, body_size=body
        )
        assert 200 <= status < 500, (method, path, headers, status)
        if status == 405:
            assert answer_headers["allow"]
    log = hub.service_log()
    assert "Uncaught exception" not in log
    assert "Traceback" not in log
