"""How the availability answers go out at size, through a real hub: a node list large enough
to be written apart from the headers arrives whole with its length; the node list and the
availability answer are revalidated with their ETags; concurrent availability requests
share catalog reads, yet an image written is in the writer's next answer."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import pytest_asyncio

from hub_service import app as app_module
from hub_service.app import ThinkubeService
from hub_service.catalog import Catalog
from hub_service.handlers import LARGE_BODY_BYTES
from tests.hub_fixtures import ACCESS_SCOPE, IMAGE_WRITERS_ROLE, IMAGES_WRITE_SCOPE
from tests.kubesim.generator import make_node
from tests.utils import eventually

NODES = 150  # about 650 bytes each: a list well above LARGE_BODY_BYTES

VLLM = {
    "display_name": "vLLM serving",
    "image": "ghcr.io/example/vllm-notebook:0.6.3",
    "metadata": {"gpu_required": True},
}


def pod_manifest(name: str, node: str) -> dict:
    resources = {"cpu": "1", "memory": "1Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "resources": {"requests": resources, "limits": resources},
                }
            ],
        },
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(module_kubesim):
    sim = await module_kubesim()
    sim.load([make_node(f"node-{i:03d}", 16, 64, index=i) for i in range(NODES)])
    return sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(sim, module_hub_factory):
    return await module_hub_factory(sim=sim)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(hub):
    return hub.client(hub.token("reader", [ACCESS_SCOPE]))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def writer(hub):
    return hub.client(
        hub.token("builder", [ACCESS_SCOPE, IMAGES_WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE])
    )


async def full_list(client):
    async def listed():
        response = await client.get("api/v1/cluster/resources")
        return response if len(response.json()) == NODES else None

    return await eventually(listed, within=10)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_large_node_list_arrives_whole_with_its_length(client):
    response = await full_list(client)
    assert response.status_code == 200
    assert len(response.content) > LARGE_BODY_BYTES  # sent apart from the headers
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    assert response.headers["content-type"] == "application/json"
    nodes = response.json()
    assert [node["name"] for node in nodes] == [f"node-{i:03d}" for i in range(NODES)]
    assert response.headers["x-thinkube-stale"] == "false"


@pytest.mark.asyncio(loop_scope="module")
async def test_the_node_list_is_revalidated_with_its_etag(client, sim):
    first = await full_list(client)
    etag = first.headers["etag"]
    again = await client.get("api/v1/cluster/resources", headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["x-thinkube-generated-at"] == first.headers["x-thinkube-generated-at"]
    other = await client.get("api/v1/cluster/resources", headers={"If-None-Match": '"0123"'})
    assert other.status_code == 200 and other.content == first.content

    sim.load([pod_manifest("etag-1", "node-007")])

    async def changed():
        response = await client.get("api/v1/cluster/resources", headers={"If-None-Match": etag})
        return response if response.status_code == 200 else None

    response = await eventually(changed, within=2)
    assert response.headers["etag"] != etag
    node_7 = next(node for node in response.json() if node["name"] == "node-007")
    assert node_7["pod_count"] == 1


@pytest.mark.asyncio(loop_scope="module")
async def test_the_large_availability_answer_arrives_whole_and_is_revalidated(client):
    response = await client.get("api/v1/availability")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert len(body["nodes"]) == NODES
    assert body["summary"]["nodes"]["total"] == NODES
    assert response.headers["etag"] == f'"{body["version"]}"'
    again = await client.get(
        "api/v1/availability", headers={"If-None-Match": response.headers["etag"]}
    )
    assert (again.status_code, again.content) == (304, b"")


@pytest.mark.asyncio(loop_scope="module")
async def test_an_image_written_is_in_the_writers_next_availability_answer(client, writer):
    async def image_names(answer) -> list[str]:
        response = await answer
        assert response.status_code == 200
        return [image["name"] for image in response.json()["images"]]

    # many forms at once, before, while and after the write
    during = [asyncio.ensure_future(image_names(client.get("api/v1/availability")))]
    during += [asyncio.ensure_future(image_names(client.get("api/v1/availability")))]
    created = await writer.put("api/v1/images/vllm", json=VLLM)
    assert created.status_code == 201
    assert "vllm" in await image_names(writer.get("api/v1/availability"))
    for names in await asyncio.gather(*during):
        assert names[:3] == ["scipy", "minimal", "pytorch-cuda"]
    assert (await writer.delete("api/v1/images/vllm")).status_code == 204
    assert "vllm" not in await image_names(writer.get("api/v1/availability"))


# --- shared catalog reads, without a hub -----------------------------------------------------


class SlowCatalog(Catalog):
    """A catalog whose first list, once read, waits until it is let go, so a test can write
    while a read is under way."""

    def __init__(self, url: str):
        super().__init__(url)
        self.reads = 0
        self.release = threading.Event()

    def list(self, kind=None):
        self.reads += 1
        entries = super().list(kind)
        if self.reads == 1:
            assert self.release.wait(10)
        return entries


@pytest.fixture
def service(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "not-a-real-token")
    service = ThinkubeService()
    service.initialize([])
    service.catalog = SlowCatalog("sqlite://")
    service.catalog.seed([{"name": "first", "image": "example/first:1"}])
    yield service
    service._db_pool.shutdown(wait=True)
    service.catalog.close()


async def test_requests_share_a_read_unless_the_service_wrote_since_it_began(service, monkeypatch):
    catalog = service.catalog
    early = [asyncio.ensure_future(service.jupyter_images_json()) for _ in range(3)]
    await asyncio.sleep(0.05)  # the first read is under way, holding the others
    await service.run_db(catalog.put, "second", {"image": "example/second:1"})
    service.catalog_changed()
    late = asyncio.ensure_future(service.jupyter_images_json())
    await asyncio.sleep(0.05)
    catalog.release.set()
    early_answers = await asyncio.gather(*early)
    assert all(answer is early_answers[0] for answer in early_answers)  # one read for three
    assert [image["name"] for image in json.loads(early_answers[0])] == ["first"]
    # begun after the write: a read of its own, which sees it
    assert [image["name"] for image in json.loads(await late)] == ["first", "second"]
    assert catalog.reads == 2
    # the read is kept: the next requests answer from it without a query
    assert [image["name"] for image in json.loads(await service.jupyter_images_json())] == [
        "first",
        "second",
    ]
    assert catalog.reads == 2
    # read again in the background once it is older than IMAGES_REFRESH_SECONDS (a write
    # made elsewhere, straight into the database, shows), answered from it meanwhile
    await service.run_db(catalog.put, "third", {"image": "example/third:1"})  # not told
    monkeypatch.setattr(app_module, "IMAGES_REFRESH_SECONDS", 0.0)
    assert len(json.loads(await service.jupyter_images_json())) == 2
    monkeypatch.setattr(app_module, "IMAGES_REFRESH_SECONDS", 60.0)

    async def third_shown() -> bool:
        return len(json.loads(await service.jupyter_images_json())) == 3

    await eventually(third_shown)
    assert catalog.reads == 3
    # and at once after this service wrote
    service.catalog_changed()
    await service.jupyter_images_json()
    assert catalog.reads == 4
