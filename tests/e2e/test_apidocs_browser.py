"""The API docs (Swagger UI at api/v1/docs) in a real browser (Playwright driving Debian's
chromium, launched as test_browser.py does) against a real JupyterHub + proxy + the
service on kubesim: a person logs in, opens the docs, sees every operation of the
document grouped by tag, and tries one ("Try it out", "Execute"), which the service answers
with their login; no request leaves the hub's origin, no script error, no
Content-Security-Policy violation. A screenshot goes to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import json
import shutil
from urllib.parse import urljoin

import pytest

from hub_service.handlers import OPENAPI_PATH
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_page_browser import log_in
from tests.hub_fixtures import SERVICE_NAME
from tests.kubesim.generator import populate

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (`make test` installs it)"
)

METHODS = ("get", "put", "post", "delete", "patch", "head")


def documented_operations() -> int:
    document = json.loads(OPENAPI_PATH.read_text())
    return sum(1 for item in document["paths"].values() for method in item if method in METHODS)


async def test_the_docs_show_every_operation_and_try_one_with_the_login(
    make_kubesim, hub_with_service
):
    sim = await make_kubesim()
    populate(sim, nodes=3, gpu_nodes=1, pods=5)
    hub = await hub_with_service(sim=sim)
    ARTIFACTS.mkdir(exist_ok=True)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            await log_in(page, hub.url)
            errors: list[str] = []
            requested: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda request: requested.append(request.url))

            docs = urljoin(hub.url, f"services/{SERVICE_NAME}/api/v1/docs")
            await page.goto(docs)  # through the service's OAuth login, back to the docs
            await page.wait_for_url(docs)
            operations = page.locator(".opblock")
            await operations.first.wait_for()
            assert await operations.count() == documented_operations()
            tags = await page.locator(".opblock-tag").all_inner_texts()
            assert any(text.startswith("jobs") for text in tags), tags
            assert "thinkube-resources" in await page.locator(".info .title").inner_text()
            assert await page.locator("#docs-status").inner_text() == ""

            # Try a route: the request goes with the browser's login (cookie + XSRF token)
            summary = page.locator("#operations-availability-get_api_v1_cluster_summary")
            await summary.locator(".opblock-summary").click()
            await summary.get_by_role("button", name="Try it out").click()
            await summary.get_by_role("button", name="Execute").click()
            status = summary.locator(".live-responses-table tbody .response-col_status").first
            await status.wait_for()
            assert (await status.inner_text()).strip() == "200"
            body = await summary.locator(".live-responses-table .microlight").first.inner_text()
            assert json.loads(body)["nodes"]["total"] == 3
            await page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)

            assert errors == []
            assert requested and all(url.startswith(hub.url) for url in requested), requested
        finally:
            await browser.close()
