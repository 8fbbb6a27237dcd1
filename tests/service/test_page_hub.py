"""The service's page through a real hub + proxy + service on kubesim: a browser without a
login is sent through the hub's OAuth, a logged-in one sees the nodes; the hub's Services
menu links to the page; the page answers 304 until the cluster changes (the way its script
asks, with the XSRF token JupyterHub wants of a script); bad GET parameters get a plain
400 page. The rendering itself is tested in test_page.py.
"""

from __future__ import annotations

import html
import os
import re
import socket
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
import pytest_asyncio

from tests.hub_fixtures import ACCESS_SCOPE, SERVICE_NAME, running_hub
from tests.kubesim.generator import make_node, populate
from tests.utils import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


class Rows(HTMLParser):
    """The node names of the page's node table (each row's first cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self._in_name = False

    def handle_starttag(self, tag, attrs):
        if tag == "div" and ("class", "name") in attrs:
            self._in_name = True
            self.names.append("")

    def handle_endtag(self, tag):
        if tag == "div":
            self._in_name = False

    def handle_data(self, data):
        if self._in_name:
            self.names[-1] += data


def node_names(page: str) -> list[str]:
    parser = Rows()
    parser.feed(page)
    return parser.names


async def test_one_machine_is_this_machine(tmp_path):
    """With the local inventory (no Kubernetes): the same page, titled This machine. First in
    the module: MockHub is one hub at a time, and the module's shared hub starts after."""
    roles = [
        {"name": "user", "scopes": ["self", ACCESS_SCOPE]},
        {
            "name": SERVICE_NAME,
            "scopes": ["list:users", "read:servers"],
            "services": [SERVICE_NAME],
        },
    ]
    async with running_hub(
        tmp_path / "hub",
        service_args=["--inventory", "local"],
        config={"JupyterHub": {"load_roles": roles}},
        wait_ready=False,
    ) as hub:
        await hub.wait_ready(hub.token("probe", [ACCESS_SCOPE]))
        browser = await hub.login("frank")
        response = await browser.get("", headers=NAVIGATE)
        assert response.status_code == 200
        assert "<h1>This machine</h1>" in response.text
        assert node_names(response.text) == [socket.gethostname()]
        assert f"{len(os.sched_getaffinity(0))} of {len(os.sched_getaffinity(0))} cores free" in (
            response.text
        )
        assert "<strong>Live</strong>: kept up to date as this machine changes." in response.text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(module_kubesim):
    sim = await module_kubesim()
    populate(sim, nodes=20, gpu_nodes=6, pods=60)
    return sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(sim, module_hub_factory):
    hub = await module_hub_factory(sim=sim, service_args=["--ThinkubeService.page_rows=15"])
    # JupyterHub lists a service with a URL in its Services menu unless `display` is False
    # (the docs' configuration says True); this harness starts it hidden.
    hub.app._service_map[SERVICE_NAME].display = True
    return hub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(hub):
    client = await hub.login("erin")
    client.headers.update(NAVIGATE)
    return client


async def test_a_browser_without_login_is_sent_to_the_hub_login(hub):
    response = await hub.client(headers=NAVIGATE).get("")
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("/hub/api/oauth2/authorize?")
    assert "client_id=service-thinkube-resources" in location
    # following it as a browser would ends on the hub's login form
    anonymous = hub.client(headers=NAVIGATE, follow_redirects=True)
    page = await anonymous.get("")
    assert "/hub/login" in str(page.url)
    assert 'name="username"' in page.text


async def test_programs_still_get_the_json_index(hub):
    response = await hub.client().get("")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["vary"] == "Accept"
    assert response.json()["openapi"] == "/services/thinkube-resources/api/v1/openapi.json"


async def test_after_login_the_page_shows_the_nodes(browser):
    response = await browser.get("")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'sha256-" in response.headers["content-security-policy"]
    body = response.text
    names = node_names(body)
    # 15 rows per page (page_rows), the six GPU nodes first
    assert len(names) == 15
    assert {name for name in names[:6]} == {f"gpu-node-{i:02d}" for i in range(1, 7)}
    assert "Showing 1–15 of 20 nodes, page 1 of 2." in body
    assert "NVIDIA H100 80GB HBM3" in body
    assert "Signed in as erin" in body
    assert re.search(r"Last change <span data-age=\"[0-9.]+\">\d+ s</span> ago", body)
    # the second page has the rest
    second = node_names((await browser.get("", params={"page": "2"})).text)
    assert len(second) == 5
    assert set(names) | set(second) == {f"gpu-node-{i:02d}" for i in range(1, 7)} | {
        f"node-{i:04d}" for i in range(1, 15)
    }


async def test_the_filter_form_finds_nodes(browser):
    body = (await browser.get("", params={"q": "RTX", "gpu": "free"})).text
    # the time-sliced RTX 3090 (4 free slots) before the RTX 4090 (2 free GPUs)
    assert node_names(body) == ["gpu-node-05", "gpu-node-03"]
    assert "Showing 1–2 of 2 matching (20 in all) nodes." in body
    assert 'value="RTX"' in body


async def test_the_services_menu_links_to_the_page(hub, browser):
    home = await browser.get(urljoin(hub.url, "hub/home"))
    assert home.status_code == 200
    links = re.findall(r'<a class="dropdown-item" href="([^"]+)">([^<]+)</a>', home.text)
    assert ("/services/thinkube-resources/", SERVICE_NAME) in links
    landed = await browser.get(urljoin(hub.url, "services/thinkube-resources/"))
    assert landed.status_code == 200
    assert len(node_names(landed.text)) == 15


async def test_the_script_way_gets_304_until_the_cluster_changes(hub, sim, browser):
    page = await browser.get("", params={"q": "late"})
    assert "No node matches." in page.text
    etag = page.headers["etag"]
    xsrf = re.search(r'data-xsrf="([^"]+)"', page.text).group(1)
    # the script starts from the ETag of the page it is on
    assert html.unescape(re.search(r'data-etag="([^"]+)"', page.text).group(1)) == etag
    # what page.js sends: a same-origin fetch, so JupyterHub wants the XSRF token
    script = {
        "Accept": "text/html",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Site": "same-origin",
        "If-None-Match": etag,
        "X-XSRFToken": xsrf,
    }
    unchanged = await browser.get("", headers=script, params={"q": "late"})
    assert unchanged.status_code == 304
    assert unchanged.headers["x-thinkube-stale"] == "false"
    # without the token the cookie does not count: sent to log in, never the page
    no_token = {k: v for k, v in script.items() if k != "X-XSRFToken"}
    assert (await browser.get("", headers=no_token, params={"q": "late"})).status_code == 302

    sim.load([make_node("node-late", 8, 32, index=90)])

    async def changed():
        response = await browser.get("", headers=script, params={"q": "late"})
        return response if response.status_code == 200 else None

    response = await eventually(changed, within=10)
    assert node_names(response.text) == ["node-late"]
    assert response.headers["etag"] != etag


async def test_bad_parameters_get_a_plain_400_page(browser):
    response = await browser.get("", params={"page": "two"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "page must be a whole number from 1 to 1000000" in response.text
    hostile = "<script>alert(1)</script>"
    response = await browser.get("", params={"q": hostile * 10})
    assert response.status_code == 400
    response = await browser.get("", params={"q": hostile})
    assert response.status_code == 200
    assert hostile not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "No node matches." in response.text


async def test_someone_without_access_gets_a_plain_403_page(hub):
    # a real hub token, but not for this service
    token = hub.token("limited", ["read:users!user=limited"])
    response = await hub.client(token, headers=NAVIGATE).get("")
    assert response.status_code == 403
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<strong>403</strong>: user limited may not use this service" in response.text
    assert "access:services!service=thinkube-resources" in response.text
