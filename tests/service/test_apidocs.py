"""The API docs page (Swagger UI at api/v1/docs) through a real hub + proxy + service on
kubesim: behind the hub login like every route, served with its files from this service
only (no other host named anywhere in the page), and the requests its script makes (the
document, "Try it out") accepted with the browser's login and the page's XSRF token.
The page in a real browser: tests/e2e/test_apidocs_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
import pytest_asyncio

from hub_service.apidocs import ASSETS, swagger_ui_folder
from tests.hub_fixtures import ACCESS_SCOPE
from tests.kubesim.generator import make_node

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
# What a page's script sends with fetch() to its own origin.
SCRIPT = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
}


class References(HTMLParser):
    """Every URL the page names (src, href) and its body's data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.data: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)
            if tag == "body" and name.startswith("data-"):
                self.data[name] = value or ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, module_hub_factory):
    sim = await module_kubesim()
    sim.load([make_node("cpu-1", 8, 32)])
    return await module_hub_factory(sim=sim)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(hub):
    return await hub.login("erin")


async def test_the_swagger_ui_package_is_installed():
    folder = swagger_ui_folder()
    assert folder is not None, "swagger-ui-py (a dependency in pyproject.toml) is missing"
    for name, (origin, _) in ASSETS.items():
        if origin == "swagger-ui":
            assert (folder / name).is_file(), name


async def test_a_browser_without_login_is_sent_to_the_hub_login(hub):
    response = await hub.client(headers=NAVIGATE).get("api/v1/docs")
    assert response.status_code == 302
    assert response.headers["location"].startswith("/hub/api/oauth2/authorize?")
    # a program without a token: the JSON 401 of every route
    response = await hub.client().get("api/v1/docs")
    assert response.status_code == 401
    assert response.json()["status"] == 401
    for name in ASSETS:
        response = await hub.client().get(f"api/v1/docs/{name}")
        assert response.status_code == 401, name


async def test_the_page_and_its_files_come_from_the_service(hub, browser):
    page = await browser.get("api/v1/docs", headers=NAVIGATE)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "default-src 'none'" in policy
    # no other host: no absolute URL, no protocol-relative one
    assert not re.search(r"(?i)(https?:)?//[a-z0-9]", page.text), page.text
    references = References()
    references.feed(page.text)
    assert references.data["data-spec"] == "openapi.json"
    assert references.data["data-xsrf"]
    page_url = str(page.url)
    assert sorted(references.urls) == sorted(f"docs/{name}" for name in ASSETS)
    for url in references.urls:
        absolute = urljoin(page_url, url)
        assert absolute.startswith(urljoin(hub.service_url, "api/v1/docs/"))
        response = await browser.get(absolute)
        assert response.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert response.headers["content-type"] == CONTENT_TYPES[suffix], url
        assert response.content
        # kept by the browser, asked again with its ETag: 304 while the file is the same
        again = await browser.get(absolute, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
    bundle = await browser.get("api/v1/docs/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content
    # only the page's files: nothing else of the package's folder, no path out of it
    for name in ("index.html", "swagger-editor-bundle.js", "..%2Fcore.py", "oauth2-redirect.html"):
        response = await browser.get(f"api/v1/docs/{name}")
        assert response.status_code == 404, name
        assert response.json()["status"] == 404


async def test_the_pages_script_gets_the_document_and_tries_routes_with_the_login(hub, browser):
    """What docs.js and Swagger UI's "Try it out" send: the browser's cookie and the
    page's XSRF token (JupyterHub refuses a script's cookie without it)."""
    page = await browser.get("api/v1/docs", headers=NAVIGATE)
    references = References()
    references.feed(page.text)
    xsrf = references.data["data-xsrf"]
    with_token = {**SCRIPT, "Accept": "application/json", "X-XSRFToken": xsrf}
    document = await browser.get("api/v1/openapi.json", headers=with_token)
    assert document.status_code == 200
    assert "/api/v1/jobs" in document.json()["paths"]
    tried = await browser.get("api/v1/cluster/summary", headers=with_token)
    assert tried.status_code == 200 and tried.json()["nodes"]["total"] == 1
    # the same script's request without the token is not taken as the person's
    refused = await browser.get("api/v1/cluster/summary", headers=SCRIPT)
    assert refused.status_code == 401


async def test_the_index_and_the_page_for_people_link_the_docs(hub, browser):
    index = (await hub.client().get("")).json()
    assert index["docs"] == "/services/thinkube-resources/api/v1/docs"
    page = await browser.get("", headers=NAVIGATE)
    assert 'href="/services/thinkube-resources/api/v1/docs"' in page.text


async def test_a_token_gets_the_page_too(hub):
    client = hub.client(hub.token("reader", [ACCESS_SCOPE]))
    response = await client.get("api/v1/docs")
    assert response.status_code == 200
    assert 'id="swagger-ui"' in response.text
