"""The service's page in a real browser (Playwright driving Debian's chromium, launched as
test_browser.py does) against a real JupyterHub + configurable-http-proxy + the availability
service on kubesim (20 nodes, 6 with GPUs), with a DCGM exporter for live GPU utilisation
and the RunPod stand-in for cloud offers.

A user logs in, opens the page from the hub's Services menu, sees every node with its bars,
the GPU models, the data's age, utilisation and offers; a node added to the cluster shows
up without a reload. With JavaScript off the same rows are there. Screenshots go to
test-artifacts/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import re
import shutil
from urllib.parse import urljoin

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.hub_fixtures import SERVICE_NAME
from tests.kubesim.generator import make_node, populate
from tests.runpod_fake import RunPodFake

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (`make test` installs it)"
)

USER = "alice"
# Live GPU utilisation as a DCGM exporter reports it, for the A100 and the H100 node.
BUSY = {"gpu-node-01": [92, 37, 0, 5], "gpu-node-02": [71, 64, 12, 0, 0, 3, 88, 100]}


def dcgm_text() -> str:
    lines = ["# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
    for host, loads in BUSY.items():
        for index, load in enumerate(loads):
            lines.append(
                f'DCGM_FI_DEV_GPU_UTIL{{gpu="{index}",UUID="GPU-{host}-{index}",'
                f'device="nvidia{index}",Hostname="{host}"}} {load}'
            )
    return "\n".join(lines) + "\n"


class ExporterHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.write(dcgm_text())


@pytest.fixture
async def exporter():
    sock, port = bind_unused_port()
    server = HTTPServer(Application([("/metrics", ExporterHandler)]))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/metrics"
    server.stop()
    await server.close_all_connections()


@pytest.fixture
async def runpod():
    fake = RunPodFake(capacity=50, start_delay_s=0.1, run_processes=False)
    await fake.start()
    yield fake
    await fake.stop()


async def log_in(page, hub_url: str) -> None:
    """The hub's login form (MockHub: the password is the user name)."""
    await page.goto(urljoin(hub_url, "hub/login"))
    await page.fill("input[name=username]", USER)
    await page.fill("input[name=password]", USER)
    await page.click("input[type=submit], button[type=submit]")
    await page.wait_for_url(lambda url: "/hub/login" not in url)


async def test_the_page_shows_the_cluster_keeps_itself_current_and_works_without_javascript(
    make_kubesim, hub_with_service, exporter, runpod
):
    sim = await make_kubesim()
    populate(sim, nodes=20, gpu_nodes=6, pods=120)
    hub = await hub_with_service(
        sim=sim,
        service_env={"RUNPOD_API_URL": runpod.url, "RUNPOD_API_KEY": runpod.api_key},
        service_args=[
            f"--ThinkubeService.dcgm_endpoints={exporter}",
            "--ThinkubeService.dcgm_interval_seconds=0.5",
            "--ThinkubeService.page_refresh_seconds=1",
        ],
    )
    # listed in the Services menu, as JupyterHub does by default (the harness hides it)
    hub.app._service_map[SERVICE_NAME].display = True
    ARTIFACTS.mkdir(exist_ok=True)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            await log_in(page, hub.url)

            # The hub's Services menu opens the page.
            await page.goto(urljoin(hub.url, "hub/home"))
            await (
                page.get_by_role("button", name="Services")
                .or_(page.get_by_role("link", name="Services"))
                .first.click()
            )
            # from here on: no script error, no Content-Security-Policy violation
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.get_by_role("link", name=SERVICE_NAME).click()
            await page.wait_for_url(f"**/services/{SERVICE_NAME}/")
            rows = page.locator("table.nodes tbody tr")
            await rows.first.wait_for()
            assert await rows.count() == 20
            assert await page.locator("h1").inner_text() == "Cluster availability"

            # DCGM's utilisation and RunPod's offers (the page's script brings them in if
            # they came after the page)
            await page.evaluate("window.notReloaded = true")
            first_row = rows.first  # most free GPUs first: the H100 node (8 GPUs)
            await first_row.locator(".chip", has_text="GPU 7: 100%").wait_for()
            await page.locator("#cloud table.offers tbody tr").first.wait_for()

            # every row has its three bars; GPU nodes name their model
            assert await rows.nth(0).locator(".meter svg").count() == 3
            assert await page.locator("table.nodes .meter").count() == 20 * 2 + 6
            assert "NVIDIA H100 80GB HBM3" in await first_row.inner_text()
            a100 = rows.filter(has_text="gpu-node-01")
            assert "NVIDIA A100 SXM4 80GB" in await a100.inner_text()
            assert await a100.locator(".chip.busy").all_inner_texts() == ["GPU 0: 92%"]
            freshness = await page.locator("#freshness").inner_text()
            assert freshness.startswith("Live: kept up to date as the cluster changes.")
            assert "Last change" in freshness and " ago." in freshness
            offers = await page.locator("#cloud").inner_text()
            assert "Cheapest first, per hour" in offers and "$" in offers
            status = await page.locator("#refresh-status").inner_text()
            assert status.startswith("Refreshes by itself every 1 s")
            await page.screenshot(path=str(ARTIFACTS / "service-page.png"), full_page=True)

            # A new node shows up by itself.
            sim.load([make_node("node-late", 8, 32, index=90)])
            await rows.filter(has_text="node-late").wait_for()
            assert await rows.count() == 21
            assert await page.evaluate("window.notReloaded") is True
            status = await page.locator("#refresh-status").inner_text()
            # "updated at ..." after the answer that brought the node, "no change since"
            # after a 304
            assert re.fullmatch(
                r"Refreshes by itself every 1 s; (updated at .+|no change since)\.", status
            ), status

            assert errors == []

            # Without JavaScript: the same page, rendered by the server.
            context = await browser.new_context(
                java_script_enabled=False, viewport={"width": 1280, "height": 900}
            )
            plain = await context.new_page()
            plain.set_default_timeout(30_000)
            await log_in(plain, hub.url)
            await plain.goto(urljoin(hub.url, f"services/{SERVICE_NAME}/"))
            plain_rows = plain.locator("table.nodes tbody tr")
            assert await plain_rows.count() == 21
            assert await plain_rows.filter(has_text="gpu-node-01").locator(".meter").count() == 3
            assert "NVIDIA A100 SXM4 80GB" in await plain.locator("table.nodes").inner_text()
            assert "Last change" in await plain.locator("#freshness").inner_text()
            footer = await plain.locator("#refresh-status").inner_text()
            assert footer == "Reload the page to see changes."
            # the filter form works as a plain GET form
            await plain.fill("input[name=q]", "late")
            await plain.click("form.filter button[type=submit]")
            await plain.wait_for_url("**q=late**")
            assert await plain_rows.count() == 1
            assert await plain.locator(".name").all_inner_texts() == ["node-late"]
            await plain.goto(urljoin(hub.url, f"services/{SERVICE_NAME}/"))
            await plain.screenshot(path=str(ARTIFACTS / "service-page-no-js.png"), full_page=True)
            await context.close()
        finally:
            await browser.close()
