"""The service lives as long as its hub (hub_service/lifecycle.py): the decision, and the
two ways of noticing, each with real processes: a "hub" process that starts a child running
HubWatch, and is then killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from hub_service.lifecycle import hub_gone
from tests.kubesim.sim import free_port

REPO = Path(__file__).resolve().parents[2]


# --- the decision ---------------------------------------------------------------------------


def test_the_hub_is_there_while_it_is_the_parent():
    assert not hub_gone(100, 100, unreachable_since=None, now=50.0, grace_s=10)
    # even with its API silent: a busy hub is still the hub
    assert not hub_gone(100, 100, unreachable_since=0.0, now=50.0, grace_s=10)


def test_a_new_parent_and_a_silent_api_for_the_grace_is_a_hub_gone():
    assert hub_gone(1, 100, unreachable_since=40.0, now=50.0, grace_s=10)
    assert not hub_gone(1, 100, unreachable_since=41.0, now=50.0, grace_s=10)
    # the API answered at the last look (a hub still there, or back): not gone
    assert not hub_gone(1, 100, unreachable_since=None, now=50.0, grace_s=10)


# --- with processes -------------------------------------------------------------------------

# The watched child: runs HubWatch until it calls on_gone, then prints why and exits 0.
# NO_SIGNAL=1 makes it a system without the parent-death signal.
CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from hub_service import lifecycle

    hub_pid = int(sys.argv[1])
    if os.environ.get("NO_SIGNAL") == "1":
        lifecycle.set_parent_death_signal = lambda sig: False

    async def main():
        gone = asyncio.Event()
        reason = []
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: (reason.append("SIGTERM"), gone.set()))
        watch = lifecycle.HubWatch(
            hub_pid, sys.argv[2], lambda why: (reason.append(why), gone.set()),
            grace_s=float(sys.argv[3]), interval_s=0.1, probe_timeout_s=0.5,
        )
        watch.start()
        print("watching", watch.parent_death_signal, flush=True)
        await gone.wait()
        await watch.stop()
        print("gone:", reason[0], flush=True)

    asyncio.run(main())
    """
)

# The "hub": starts the child (its own session, as JupyterHub starts a managed service),
# prints the child's pid, and waits to be killed.
HUB = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1], str(os.getpid()), *sys.argv[2:]],
        stdout=open(os.environ["CHILD_OUT"], "w"), start_new_session=True,
    )
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


async def start_hub_and_child(tmp_path: Path, api_url: str, grace_s: float, no_signal: bool):
    out = tmp_path / "child.out"
    env = {**os.environ, "CHILD_OUT": str(out), "NO_SIGNAL": "1" if no_signal else "0"}
    env["PYTHONPATH"] = str(REPO)
    hub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HUB,
        CHILD,
        api_url,
        str(grace_s),
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )
    child = psutil.Process(int(await hub.stdout.readline()))
    deadline = time.monotonic() + 30
    while "watching" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the child did not start watching"
        assert child.is_running()
        await asyncio.sleep(0.05)
    return hub, child, out


async def wait_gone(child: psutil.Process, within: float) -> float:
    started = time.monotonic()
    while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() - started > within:
            child.kill()
            pytest.fail(f"the child still runs {within}s after its hub was killed")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
async def test_the_parent_death_signal_ends_the_child_when_its_hub_is_killed(tmp_path):
    # the hub's API "answers" (nothing refuses): only the signal can tell
    async with answering_api() as api_url:
        hub, child, out = await start_hub_and_child(tmp_path, api_url, 60, no_signal=False)
        assert out.read_text().startswith("watching True")
        hub.kill()
        await hub.wait()
        assert await wait_gone(child, within=5) < 5
    assert "gone: SIGTERM" in out.read_text()


async def test_without_the_signal_a_new_parent_and_a_silent_api_end_the_child(tmp_path):
    async with answering_api() as api_url:
        hub, child, out = await start_hub_and_child(tmp_path, api_url, 0.5, no_signal=True)
        assert out.read_text().startswith("watching False")
        hub.kill()
        await hub.wait()
        # re-parented, but the hub's API still answers: it stays
        await asyncio.sleep(1.5)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    # the API is gone too: it ends within the grace and a look or two
    assert await wait_gone(child, within=5) < 5
    assert "is gone and its API has not answered for 0.5s" in out.read_text()


async def test_a_hub_gone_before_the_watch_began_ends_the_child_at_once(tmp_path):
    out = tmp_path / "child.out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the recorded hub pid is not the parent: as if the hub had ended while the child started
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        "1" if os.getpid() != 1 else "2",
        "http://127.0.0.1:9/",
        "60",
        stdout=open(out, "w"),  # noqa: ASYNC230 (the child's output file)
        env=env,
        cwd=str(REPO),
    )
    assert await asyncio.wait_for(child.wait(), 30) == 0
    assert "ended before this service started" in out.read_text()


class answering_api:
    """A hub API root that answers 200 (on a free port) while the block runs; its
    connections are closed after it."""

    async def __aenter__(self) -> str:
        class Root(web.RequestHandler):
            def get(self) -> None:
                self.write({"version": "test"})

        self.port = free_port()
        self.server = HTTPServer(web.Application([(r"/hub/api/", Root)]))
        self.server.listen(self.port, "127.0.0.1")
        return f"http://127.0.0.1:{self.port}/hub/api/"

    async def __aexit__(self, *exc_info) -> None:
        self.server.stop()
        await self.server.close_all_connections()
