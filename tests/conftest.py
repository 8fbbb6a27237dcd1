"""Shared fixtures: kubesim, and the opt-in switch to a real cluster.

kubernetes_asyncio reads KUBECONFIG when it is imported, and kubespawner loads that file
once, so a placeholder kubeconfig is in place before anything imports them; each test
points its clients at its own kubesim explicitly.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["tests.hub_fixtures"]

REAL_CLUSTER = os.environ.get("KUBESIM_REAL_CLUSTER") == "1"
_session_dir = Path(tempfile.mkdtemp(prefix="thinkube-tests-"))
if not REAL_CLUSTER:
    _placeholder = _session_dir / "kubeconfig"
    _placeholder.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
        "clusters: [{name: none, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: none, user: {}}]\n"
        "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
    )
    os.environ["KUBECONFIG"] = str(_placeholder)

from kubernetes_asyncio import client as k8s_client  # noqa: E402
from kubernetes_asyncio import config as k8s_config  # noqa: E402

from tests.kubesim import KubeSim  # noqa: E402
from tests.kubesim.generator import make_node  # noqa: E402

# Reference data the project may not carry (the z2jh chart's values and schema, a fuller
# transcription of RunPod's API) sits beside the checkout in CI as ../shared. A fresh clone
# has none: the checks that need it skip, naming what is missing.
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
SHARED_FIXTURES = "fixtures"


def shared_missing(relative: str) -> str:
    return f"../shared/{relative} is not here (reference data CI provides)"


def shared_file(relative: str) -> Path:
    """`../shared/<relative>`; the calling test is skipped when it is not there."""
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(shared_missing(relative))
    return path


@pytest.fixture
def shared_dir() -> Path:
    """The folder that holds `fixtures/...`; the test is skipped without it."""
    if not (SHARED / SHARED_FIXTURES).is_dir():
        pytest.skip(shared_missing(f"{SHARED_FIXTURES}/"))
    return SHARED


@pytest.fixture
async def make_kubesim(tmp_path):
    """Factory: `sim = await make_kubesim(process_runtime=True)`; stopped afterwards."""
    sims: list[KubeSim] = []

    async def make(**kwargs) -> KubeSim:
        sim = KubeSim(**kwargs)
        await sim.start()
        sim.kubeconfig = sim.write_kubeconfig(tmp_path / f"kubeconfig-{len(sims)}")
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def kubesim(make_kubesim) -> KubeSim:
    return await make_kubesim()


async def api_client_for(kubeconfig: Path | str) -> k8s_client.ApiClient:
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return k8s_client.ApiClient(configuration)


@dataclass
class Cluster:
    """Where a client-level test runs: kubesim, or a real cluster (opt-in)."""

    kubeconfig: Path
    namespace: str
    api: k8s_client.ApiClient
    sim: KubeSim | None

    @property
    def core(self) -> k8s_client.CoreV1Api:
        return k8s_client.CoreV1Api(self.api)


@pytest.fixture(params=["kubesim", "real"])
async def cluster(request, make_kubesim):
    """Client-level tests run on kubesim, and also on a real cluster with
    KUBESIM_REAL_CLUSTER=1 and KUBECONFIG set, so anyone with k3s can check that the two
    agree. The real-cluster runs are skipped otherwise."""
    if request.param == "real":
        if not REAL_CLUSTER:
            pytest.skip("set KUBESIM_REAL_CLUSTER=1 and KUBECONFIG to run against a real cluster")
        kubeconfig = Path(os.environ["KUBECONFIG"])
        sim = None
    else:
        sim = await make_kubesim()
        # Like a one-node k3s: somewhere for pods to run.
        sim.load([make_node("worker-1", 8, 32)])
        kubeconfig = sim.kubeconfig
    api = await api_client_for(kubeconfig)
    core = k8s_client.CoreV1Api(api)
    namespace = f"kubesim-test-{uuid.uuid4().hex[:6]}"
    await core.create_namespace({"metadata": {"name": namespace}})
    try:
        yield Cluster(kubeconfig, namespace, api, sim)
    finally:
        try:
            await core.delete_namespace(namespace)
        finally:
            await api.close()
