"""Who may use thinkube-resources, through a real hub: tokens and OAuth cookies, the access
scope and the custom images-write scope, and JSON errors for everyone else."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.hub_fixtures import ACCESS_SCOPE, IMAGE_WRITERS_ROLE, IMAGES_WRITE_SCOPE
from tests.kubesim.generator import make_node
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROTECTED = [
    "api/v1/ready",
    "api/v1/cluster/resources",
    "api/v1/cluster/resources/cpu-1",
    "api/v1/cluster/summary",
    "api/v1/availability",
    "api/v1/images",
    "api/v1/images/jupyter",
    "api/v1/images/scipy",
    "api/v1/openapi.json",
    "api/v1/docs",
    "api/v1/docs/swagger-ui-bundle.js",
    "metrics",
]
NEW_IMAGE = {"image": "quay.io/jupyter/r-notebook:2025-08-18", "display_name": "R"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, module_hub_factory):
    sim = await module_kubesim()
    sim.load([make_node("cpu-1", 8, 32)])
    return await module_hub_factory(sim=sim)


async def test_health_needs_no_credentials(hub):
    response = await hub.client().get("api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", PROTECTED)
async def test_no_credentials_is_401_json(hub, path):
    response = await hub.client().get(path)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == 401
    assert "authentication required" in body["error"]


async def test_an_unknown_token_is_401(hub):
    response = await hub.client("0123456789abcdef0123456789abcdef").get("api/v1/cluster/summary")
    assert response.status_code == 401
    assert response.json()["status"] == 401


@pytest.mark.parametrize("path", PROTECTED)
async def test_token_with_the_access_scope_reads_everything(hub, path):
    client = hub.client(hub.token("reader", [ACCESS_SCOPE]))
    response = await client.get(path)
    assert response.status_code == 200, response.text
    if path == "metrics":
        assert response.headers["content-type"].startswith("text/plain")
        assert "thinkube_nodes 1.0" in response.text
    elif path == "api/v1/docs":
        assert response.headers["content-type"] == "text/html; charset=utf-8"
    elif path.startswith("api/v1/docs/"):
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    else:
        assert response.headers["content-type"] == "application/json"


async def test_token_without_the_access_scope_is_403_json(hub):
    # a token limited to reading its own user: a real hub token, but not for this service
    token = hub.token("limited", ["read:users!user=limited"])
    response = await hub.client(token).get("api/v1/cluster/resources")
    assert response.status_code == 403
    body = response.json()
    assert body["status"] == 403
    assert body["error"] == (
        "user limited may not use this service "
        "(needs the scope access:services!service=thinkube-resources)"
    )


async def test_a_token_in_the_url_is_ignored_and_never_logged(hub):
    token = hub.token("url-user", [ACCESS_SCOPE])
    response = await hub.client().get("api/v1/cluster/summary", params={"token": token})
    assert response.status_code == 401
    # and a token in the header works, also never logged
    ok = await hub.client(token).get("api/v1/cluster/summary")
    assert ok.status_code == 200

    # the access log line is written once the answer is sent: it may trail the answer
    async def logged():
        return "401 GET /services/thinkube-resources/api/v1/cluster/summary" in hub.service_log()

    await eventually(logged)
    assert token not in hub.service_log()


async def test_image_writes_need_the_custom_scope(hub):
    reader = hub.client(hub.token("plain", [ACCESS_SCOPE]))
    put = await reader.put("api/v1/images/r-lang", json=NEW_IMAGE)
    assert put.status_code == 403
    assert put.json() == {
        "status": 403,
        "error": f"this needs the scope {IMAGES_WRITE_SCOPE}",
    }
    delete = await reader.delete("api/v1/images/scipy")
    assert delete.status_code == 403
    # nothing changed
    assert (await reader.get("api/v1/images/r-lang")).status_code == 404
    assert (await reader.get("api/v1/images/scipy")).status_code == 200

    writer = hub.client(
        hub.token("builder", [ACCESS_SCOPE, IMAGES_WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE])
    )
    created = await writer.put("api/v1/images/r-lang", json=NEW_IMAGE)
    assert created.status_code == 201
    assert (await reader.get("api/v1/images/r-lang")).json()["image"] == NEW_IMAGE["image"]
    assert (await writer.delete("api/v1/images/r-lang")).status_code == 204
    log = hub.service_log()
    assert "image r-lang registered by user builder" in log
    assert "image r-lang deleted by user builder" in log


async def test_a_write_token_still_needs_access_to_the_service(hub):
    # the custom scope alone is not access to the service
    hub.user("custom-only", [IMAGE_WRITERS_ROLE])
    token = hub.token("custom-only", [IMAGES_WRITE_SCOPE])
    response = await hub.client(token).put("api/v1/images/r-lang", json=NEW_IMAGE)
    assert response.status_code == 403
    assert "may not use this service" in response.json()["error"]


async def test_a_browser_without_login_is_sent_to_the_hub(hub):
    response = await hub.client(headers={"Accept": "text/html"}).get("api/v1/cluster/summary")
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("/hub/api/oauth2/authorize?")
    assert "client_id=service-thinkube-resources" in location


async def test_cookie_login_through_the_hub_reads_the_service(hub):
    browser = await hub.login("carol")
    assert any(cookie.startswith("service-thinkube-resources") for cookie in browser.cookies)
    summary = await browser.get("api/v1/cluster/summary")
    assert summary.status_code == 200
    assert summary.json()["nodes"] == {"total": 1, "ready": 1, "schedulable": 1}
    resources = await browser.get("api/v1/cluster/resources")
    token_view = await hub.client(hub.token("carol", [ACCESS_SCOPE])).get(
        "api/v1/cluster/resources"
    )
    assert resources.json() == token_view.json()
    assert [node["name"] for node in resources.json()] == ["cpu-1"]


async def test_cookie_writes_need_xsrf_and_the_write_scope(hub):
    hub.user("dora", [IMAGE_WRITERS_ROLE])
    browser = await hub.login("dora")
    # without the XSRF token the cookie does not authenticate a write at all
    response = await browser.put("api/v1/images/r-lang", json=NEW_IMAGE)
    assert response.status_code == 401
    # with it, the user is known; the OAuth token the service got only carries access to
    # the service (not the write scope) unless the service asks for more
    xsrf = browser.cookies.get("_xsrf", path=hub.service_prefix)
    response = await browser.put(
        "api/v1/images/r-lang", json=NEW_IMAGE, headers={"X-XSRFToken": xsrf}
    )
    assert response.status_code == 403
    assert response.json()["error"] == f"this needs the scope {IMAGES_WRITE_SCOPE}"
    assert (await browser.get("api/v1/images/r-lang")).status_code == 404


async def test_unknown_routes_are_json_404(hub):
    client = hub.client(hub.token("reader", [ACCESS_SCOPE]))
    response = await client.get("api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"status": 404, "error": "no such route"}


async def test_the_service_root_says_where_the_api_is(hub):
    response = await hub.client().get("")
    assert response.status_code == 200
    assert response.json() == {
        "name": "thinkube-resources",
        "api": "/services/thinkube-resources/api/v1/",
        "openapi": "/services/thinkube-resources/api/v1/openapi.json",
        "docs": "/services/thinkube-resources/api/v1/docs",
    }
