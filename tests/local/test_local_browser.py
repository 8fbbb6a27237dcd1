"""The single-machine form in a real browser: Playwright driving Debian's chromium against
`thinkube hub` as a subprocess. alice logs in with the printed password, sees this machine
and "no GPU", starts a 1-CPU server and lands in JupyterLab; bob then sees alice's core taken.
Screenshots go to test-artifacts/local-*.png."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urljoin

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.local.hubproc import local_hub, option, server_processes
from tests.utils import eventually

playwright_api = pytest.importorskip("playwright.async_api")

CORES = len(os.sched_getaffinity(0))

pytestmark = [
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (`make test` installs it)"
    ),
    pytest.mark.skipif(CORES < 2, reason="needs at least 2 CPU cores to share"),
]


async def enabled(page, name: str) -> dict[str, bool]:
    return await page.eval_on_selector(
        f'select[name="{option(name)}"]',
        "s => Object.fromEntries([...s.options].map(o => [o.value, !o.disabled]))",
    )


async def log_in(page, hub, user: str) -> None:
    await page.goto(urljoin(hub.url, "hub/login"))
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", hub.password)
    await page.click("input[type=submit], button[type=submit]")
    await page.wait_for_url(lambda url: "/hub/login" not in url)


async def test_browser_single_machine_form_spawn_and_second_user(tmp_path):
    from tests.e2e.test_browser import ARTIFACTS, screenshot

    ARTIFACTS.mkdir(exist_ok=True)
    async with local_hub(tmp_path / "hub") as hub:
        await hub.form(await hub.login("alice"))  # the service is up (it starts with the hub)
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                alice = await browser.new_page(viewport={"width": 1280, "height": 900})
                alice.set_default_timeout(30_000)
                await log_in(alice, hub, "alice")
                await alice.goto(urljoin(hub.url, "hub/spawn"))
                machine = alice.locator("#thinkube-machine")
                await machine.wait_for()
                text = await machine.inner_text()
                assert f"{CORES} CPUs ({CORES} free)" in text and "no GPU" in text, text
                await screenshot(alice, "local-spawn-form.png")

                # No GPU here: only "No GPU" can be chosen, wherever.
                assert (await enabled(alice, "gpus"))["0"]
                assert not any(v for k, v in (await enabled(alice, "gpus")).items() if k != "0")
                await alice.select_option(f'select[name="{option("cpu")}"]', "1")
                await alice.select_option(f'select[name="{option("memory")}"]', "2")
                await alice.click("#spawn_form button[type=submit]")
                await alice.wait_for_url("**/user/alice/**", timeout=60_000)
                await alice.wait_for_selector(".jp-LabShell", timeout=60_000)
                await alice.screenshot(path=str(ARTIFACTS / "local-server.png"))
                assert len(server_processes(hub, "alice")) == 1

                # bob, in another browser context: alice's core is taken.
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                bob = await context.new_page()
                bob.set_default_timeout(30_000)
                await log_in(bob, hub, "bob")

                async def bobs_form_shows_it():
                    await bob.goto(urljoin(hub.url, "hub/spawn"))
                    text = await bob.locator("#thinkube-machine").inner_text()
                    return f"{CORES} CPUs ({CORES - 1} free)" in text

                await eventually(bobs_form_shows_it, within=15, interval=0.5)
                cpus = await enabled(bob, "cpu")
                assert {k for k, v in cpus.items() if v} == {
                    k for k in cpus if int(k) <= CORES - 1
                }, cpus
                await screenshot(bob, "local-spawn-form-second-user.png")
            finally:
                await browser.close()
