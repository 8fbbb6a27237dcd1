"""The spawn form in a real browser: Playwright driving Debian's chromium (`make test` installs
it) against the same real JupyterHub + configurable-http-proxy + availability service +
kubesim (process runtime) as test_thinkube_spawner.py.

A user logs in, opens the form, sees the CPU/memory/GPU choices narrow as the placement
changes (the page's own script does this), picks a GPU model, starts, and lands in the running
JupyterLab. Screenshots go to test-artifacts/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from tests.e2e.test_thinkube_spawner import hub_config, lab, option, pods, stop  # noqa: F401
from tests.kubesim.generator import make_node

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: keep chromium from phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
A100_MODEL = "gpu:nvidia-a100-sxm4-80gb"
USER = "alice"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (`make test` installs it)"
)


async def enabled(page, name: str) -> dict[str, bool]:
    """Each option of the select `name` (a profile option key): enabled or not, as the
    browser has it now."""
    return await page.eval_on_selector(
        f'select[name="{option(name)}"]',
        "s => Object.fromEntries([...s.options].map(o => [o.value, !o.disabled]))",
    )


async def screenshot(page, name: str) -> None:
    """A full-page screenshot with every select drawn as an open list (headless chromium
    draws no drop-downs), so the disabled choices show greyed out."""
    lists = "s => s.forEach(e => e.size = e.options.length + e.querySelectorAll('optgroup').length)"
    await page.eval_on_selector_all("#thinkube-form select", lists)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    await page.eval_on_selector_all("#thinkube-form select", "s => s.forEach(e => e.size = 0)")


async def choose(page, name: str, value: str) -> None:
    await page.select_option(f'select[name="{option(name)}"]', value)


async def test_browser_picks_a_gpu_model_sees_choices_narrow_and_lands_in_lab(
    lab,  # noqa: F811
    hub_with_service,
):
    # A small CPU node next to the lab's big GPU nodes: 1.9 CPUs and 2 GiB allocatable, so
    # pinned there, 4 CPUs (2 guaranteed) and 4 GiB do not fit; on an A100 node they do.
    lab.load([make_node("cpu-small", 2, 3, None, 3)])
    hub = await hub_with_service(sim=lab, config=hub_config(lab, gpu_choices=[0, 1, 2, 4, 8]))
    hub._admin = hub.token("admin-probe", roles_=["admin"])
    ARTIFACTS.mkdir(exist_ok=True)

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)

            # Log in (MockHub: the password is the user name).
            await page.goto(urljoin(hub.url, "hub/login"))
            await page.fill("input[name=username]", USER)
            await page.fill("input[name=password]", USER)
            await page.click("input[type=submit], button[type=submit]")
            await page.wait_for_url(lambda url: "/hub/login" not in url)

            await page.goto(urljoin(hub.url, "hub/spawn"))
            where = page.locator(f'select[name="{option("where")}"]')
            await where.wait_for()
            assert "cpu-small: 1.9/1.9 CPU, 2/2 GiB" in await where.inner_text()
            await screenshot(page, "spawn-form.png")

            # Any node (CPU only): 0 is the only GPU count offered.
            await choose(page, "where", "cpu")
            gpus = await enabled(page, "gpus")
            assert gpus == {"0": True, "1": False, "2": False, "4": False, "8": False}, gpus

            # Pinned to the small node: the big CPU and memory choices are off.
            await choose(page, "where", "node:cpu-small")
            cpu, memory = await enabled(page, "cpu"), await enabled(page, "memory")
            assert cpu == {"1": True, "2": True, "4": False}, cpu
            assert memory == {"1": True, "2": True, "4": False}, memory
            await screenshot(page, "spawn-form-small-node.png")

            # Any node with a free A100: 1 to 4 GPUs (4 free on one node; 0 makes no sense
            # there), and all the CPU and memory choices.
            await choose(page, "where", A100_MODEL)
            gpus = await enabled(page, "gpus")
            assert gpus == {"0": False, "1": True, "2": True, "4": True, "8": False}, gpus
            assert await enabled(page, "cpu") == {"1": True, "2": True, "4": True}
            assert await enabled(page, "memory") == {"1": True, "2": True, "4": True}
            await choose(page, "gpus", "1")
            await choose(page, "cpu", "2")
            await choose(page, "memory", "2")
            await screenshot(page, "spawn-form-gpu.png")

            # Start, and wait (through the spawn-pending page if the spawn is slow) for the
            # running server behind the proxy.
            await page.click("#spawn_form button[type=submit]")
            await page.wait_for_url(f"**/user/{USER}/**", timeout=60_000)
            await page.wait_for_selector(".jp-LabShell", timeout=60_000)
            await page.wait_for_selector(".jp-Launcher", timeout=60_000)
            await page.screenshot(path=str(ARTIFACTS / "server.png"))
            assert f"/user/{USER}/" in page.url
        finally:
            await browser.close()

    # The pod carries the choice made in the browser.
    (pod,) = await pods(lab)
    assert pod.spec.node_name in ("gpu-a", "gpu-b")
    limits = pod.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1" and limits["cpu"] == "2", limits

    # The server answers through the proxy.
    token = hub.token(USER)
    async with httpx.AsyncClient(headers={"Authorization": f"token {token}"}) as http:
        answer = await http.get(urljoin(hub.url, f"user/{USER}/api/status"))
    assert answer.status_code == 200, answer.text[:300]

    # Stopping through the hub's API (admin token) deletes the pod.
    await stop(hub, USER)
    assert await pods(lab) == []
