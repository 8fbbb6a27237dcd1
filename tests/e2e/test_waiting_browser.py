"""Waiting for a GPU in a real browser (Debian's chromium through Playwright) against a real
hub on kubesim: every A100 is taken; the person chooses "Wait for the next free A100" in the
spawn form, lands on their place in the queue (screenshot with position and estimate), leaves
the queue and joins again, and the page, told by the pushed events, moves on to their
running server by itself when a GPU frees. Screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
from urllib.parse import urljoin

import pytest

from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, choose, screenshot
from tests.e2e.test_thinkube_spawner import hub_config, stop
from tests.e2e.test_waiting_kubesim import A100_KEY, IMAGE, a100_lab, fill, service_args

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (`make test` installs it)"
)
USER = "carol"


async def test_the_waiting_page_shows_place_and_estimate_and_moves_on_to_the_server(
    make_kubesim, hub_with_service
):
    sim = await a100_lab(make_kubesim, nodes=1)
    hub = await hub_with_service(sim=sim, config=hub_config(sim), service_args=service_args())
    await fill(hub, "alice")
    ARTIFACTS.mkdir(exist_ok=True)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            errors = []
            page.on("console", lambda m: errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(urljoin(hub.url, "hub/login"))
            await page.fill("input[name=username]", USER)
            await page.fill("input[name=password]", USER)
            await page.click("input[type=submit], button[type=submit]")
            await page.wait_for_url(lambda url: "/hub/login" not in url)

            async def join() -> None:
                await page.goto(urljoin(hub.url, "hub/spawn"))
                await choose(page, "where", "wait:" + A100_KEY)
                await choose(page, "image", IMAGE["name"])
                await choose(page, "gpus", "1")
                await choose(page, "cpu", "2")
                await choose(page, "memory", "2")
                button = page.locator("#spawn_form button[type=submit]")
                assert (await button.inner_text()).strip() == "Wait in line", errors
                await screenshot(page, "spawn-form-wait.png")
                await button.click()
                await page.wait_for_url("**/services/thinkube-resources/waiting/s-*")

            await join()
            # changes are pushed to the page (Server-Sent Events, with its login cookie)
            await page.wait_for_selector("#waiting[data-live=events]")
            assert (await page.inner_text("#position")).strip() == "#1"
            assert "in about 1 h (estimate)" in await page.inner_text("#eta")
            await page.screenshot(path=str(ARTIFACTS / "waiting-page.png"), full_page=True)

            # Leave the queue (the page's form), then join again.
            await page.click("#cancel")
            await page.wait_for_selector("text=You left the queue")
            await join()

            # alice stops: the page moves on to the server by itself, told by the stream.
            await page.wait_for_selector("#waiting[data-live=events]")
            await stop(hub, "alice")
            await page.wait_for_url(f"**/user/{USER}/**", timeout=90_000)
            assert not [e for e in errors if "Content Security Policy" in e], errors
            await page.wait_for_selector(".jp-LabShell", timeout=60_000)
            await page.screenshot(path=str(ARTIFACTS / "waited-server.png"))
        finally:
            await browser.close()
