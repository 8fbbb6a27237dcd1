"""The service's life with a real hub (`jupyterhub` in a process of its own, the service
managed by it, watching a kubesim): it goes when its hub is killed, freeing its port for
the next hub's service; it stops within 2 s of SIGTERM with its watches open and a catalog
query stuck in a locked database."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import httpx
import psutil
import pytest

from tests.service.hubprocess import HubSettings, port_is_free, reap, start_hub
from tests.utils import eventually


def open_watches(sim) -> int:
    return sum(len(watchers) for watchers in sim.store._watchers.values())


async def wait_exited(process: psutil.Process, within: float) -> float:
    """Seconds until `process` has exited (a zombie counts: it has let go of everything)."""
    started = time.monotonic()
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        if time.monotonic() - started > within:
            pytest.fail(f"process {process.pid} still runs after {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_killed_hub_takes_its_service_along_and_the_next_hub_starts_it(kubesim, tmp_path):
    # where the parent-death signal is not available: the parent changed and the API silent
    grace = ("--ThinkubeService.hub_gone_seconds=2",)
    settings = HubSettings.new(tmp_path / "hub", kubesim.kubeconfig, grace)
    first = await start_hub(settings)
    second = None
    first_children: list[psutil.Process] = []
    try:
        service = await first.wait_service()
        first_children = psutil.Process(first.pid).children()
        await first.kill()  # SIGKILL: the hub cannot stop anything itself

        await wait_exited(service, within=10)
        assert port_is_free(settings.ports.service)
        log = first.service_log()
        assert "thinkube-resources stopping: SIGTERM" in log  # the parent-death signal
        assert "thinkube-resources stopped" in log

        # a new hub with the same configuration, on the same ports
        second = await start_hub(settings)
        new_service = await second.wait_service()
        assert new_service.pid != service.pid
        assert "Address already in use" not in second.service_log()
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {settings.reader_token}"}
        ) as client:
            response = await client.get(second.service_url + "api/v1/cluster/summary")
        assert response.status_code == 200, response.text
        assert await second.stop(signal.SIGTERM) < 30
    except BaseException:
        print(first.log()[-3000:])
        if second is not None:
            print(second.log()[-3000:])
        raise
    finally:
        for hub in (first, second):
            if hub is not None and hub.process.returncode is None:
                await reap(psutil.Process(hub.pid))
        await reap(*first_children)  # the first hub's proxy, should the second have left it


async def test_sigterm_stops_the_service_within_2s_with_watches_open_and_a_slow_database(
    kubesim, tmp_path
):
    settings = HubSettings.new(tmp_path / "hub", kubesim.kubeconfig)
    hub = await start_hub(settings)
    lock = None
    try:
        service = await hub.wait_service()
        assert open_watches(kubesim) >= 2  # nodes and pods, held open by the service
        async with httpx.AsyncClient(
            base_url=hub.service_url,
            headers={"Authorization": f"token {settings.reader_token}"},
            timeout=30,
        ) as client:
            assert (await client.get("api/v1/images")).status_code == 200
            # another connection holds the catalog's write lock: the next read waits in
            # SQLite (up to its 5 s busy timeout) in the service's database thread
            lock = sqlite3.connect(settings.workdir / "catalog.sqlite", isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            stuck = asyncio.ensure_future(client.get("api/v1/images"))
            await asyncio.sleep(0.5)
            assert not stuck.done()

            service.send_signal(signal.SIGTERM)
            took = await wait_exited(service, within=10)
            assert took < 2, f"the service took {took:.2f}s to stop"
            assert port_is_free(settings.ports.service)
            # the request under way was cut, not answered with a 500
            try:
                response = await stuck
            except httpx.TransportError:
                pass
            else:
                assert response.status_code < 500 or response.status_code == 503

        async def watches_closed() -> bool:
            return open_watches(kubesim) == 0

        await eventually(watches_closed, within=5)
        log = hub.service_log()
        assert "thinkube-resources stopping: SIGTERM" in log
        assert "thinkube-resources stopped" in log
        assert "Traceback" not in log
        assert "cut by the stop: GET /services/thinkube-resources/api/v1/images" in log
    finally:
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
        if hub.process.returncode is None:
            await hub.stop(signal.SIGTERM)
