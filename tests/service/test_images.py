"""The image catalog over HTTP, through a real hub: CRUD with the write scope, and bad bodies
answered 400 with the field named and nothing stored."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.hub_fixtures import ACCESS_SCOPE, IMAGE_WRITERS_ROLE, IMAGES_WRITE_SCOPE
from tests.kubesim.generator import make_node

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEEDED = ["scipy", "minimal", "pytorch-cuda"]  # hub_service.catalog.DEFAULT_IMAGES, by order
VLLM = {
    "display_name": "vLLM serving",
    "description": "vLLM with CUDA 12",
    "image": "ghcr.io/example/vllm-notebook:0.6.3",
    "tags": ["gpu", "llm"],
    "metadata": {"gpu_required": True, "cpu_limit": 8, "mem_limit": "48Gi"},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, module_hub_factory):
    sim = await module_kubesim()
    sim.load([make_node("cpu-1", 8, 32)])
    return await module_hub_factory(sim=sim)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def writer(hub):
    return hub.client(
        hub.token("builder", [ACCESS_SCOPE, IMAGES_WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE])
    )


async def names(client, path="api/v1/images"):
    response = await client.get(path)
    assert response.status_code == 200
    return [image["name"] for image in response.json()]


async def test_seeded_catalog_in_the_shape_of_the_old_endpoint(hub, writer):
    response = await writer.get("api/v1/images/jupyter")
    assert response.status_code == 200
    images = response.json()
    assert [image["name"] for image in images] == ["scipy", "minimal", "pytorch-cuda"]
    assert images[0] == {
        "name": "scipy",
        "display_name": "Data science (SciPy)",
        "description": "Python with pandas, scikit-learn, matplotlib and the SciPy stack. CPU only.",
        "default": True,
        "image": "quay.io/jupyter/scipy-notebook:2025-08-18",
        "tags": ["python", "cpu"],
        "kind": "jupyter",
        "pull_policy": "IfNotPresent",
        "metadata": {
            "gpu_required": False,
            "cpu_limit": 4,
            "mem_limit": "8Gi",
            "cloud_image": None,
        },
    }
    assert images[2]["metadata"]["gpu_required"] is True


async def test_create_read_replace_delete(hub, writer):
    created = await writer.put("api/v1/images/vllm", json=VLLM)
    assert created.status_code == 201
    assert created.json() == {
        "name": "vllm",
        "display_name": "vLLM serving",
        "description": "vLLM with CUDA 12",
        "default": False,
        "image": "ghcr.io/example/vllm-notebook:0.6.3",
        "tags": ["gpu", "llm"],
        "kind": "jupyter",
        "pull_policy": "IfNotPresent",
        "metadata": {
            "gpu_required": True,
            "cpu_limit": 8,
            "mem_limit": "48Gi",
            "cloud_image": None,
        },
    }
    reader = hub.client(hub.token("reader", [ACCESS_SCOPE]))
    assert (await reader.get("api/v1/images/vllm")).json() == created.json()
    # defaults first, then by display name
    assert await names(reader, "api/v1/images/jupyter") == [
        "scipy",
        "minimal",
        "pytorch-cuda",
        "vllm",
    ]

    # replace, making it the default: the old default gives way
    replaced = await writer.put(
        "api/v1/images/vllm", json={**VLLM, "default": True, "image": "ghcr.io/example/vllm:0.7"}
    )
    assert replaced.status_code == 200
    assert replaced.json()["image"] == "ghcr.io/example/vllm:0.7"
    images = (await reader.get("api/v1/images/jupyter")).json()
    assert [(image["name"], image["default"]) for image in images] == [
        ("vllm", True),
        ("scipy", False),
        ("minimal", False),
        ("pytorch-cuda", False),
    ]

    # another kind is in the full list, not in the Jupyter one
    vscode = await writer.put(
        "api/v1/images/code-server",
        json={"image": "codercom/code-server:4.96.2", "kind": "vscode"},
    )
    assert vscode.status_code == 201
    assert "code-server" in await names(reader)
    assert "code-server" not in await names(reader, "api/v1/images/jupyter")

    assert (await writer.delete("api/v1/images/vllm")).status_code == 204
    assert (await writer.delete("api/v1/images/code-server")).status_code == 204
    gone = await reader.get("api/v1/images/vllm")
    assert gone.status_code == 404
    assert gone.json() == {"status": 404, "error": "no image named 'vllm'"}
    again = await writer.delete("api/v1/images/vllm")
    assert again.status_code == 404
    # no default left: by display name ("Data science (SciPy)", "Minimal Python", "PyTorch ...")
    assert await names(reader) == ["scipy", "minimal", "pytorch-cuda"]


BAD_BODIES = [
    # (body as sent, the field named in the answer, part of the message)
    ({"display_name": "no image"}, "image", "image"),
    ({"image": "Quay.io/UPPER/case:tag"}, "image", "not a valid image reference"),
    ({"image": "ubuntu:24.04", "tags": "gpu"}, "tags", "must be a list of strings"),
    ({"image": "ubuntu:24.04", "tags": ["ok", 3]}, "tags.1", "must be a string"),
    ({"image": "ubuntu:24.04", "colour": "blue"}, "colour", "colour"),
    ({"image": "ubuntu:24.04", "default": "yes"}, "default", "must be true or false"),
    (
        {"image": "ubuntu:24.04", "metadata": {"cpu_limit": -1}},
        "metadata.cpu_limit",
        "from 0.001 to 4096",
    ),
    ({"image": "ubuntu:24.04", "metadata": {"mem_limit": "lots"}}, "metadata.mem_limit", "lots"),
    ({"image": "ubuntu:24.04", "metadata": {"gpu": 1}}, "metadata.gpu", "gpu"),
    ({"image": "ubuntu:24.04", "name": "other"}, "name", "does not match the name in the URL"),
    ({"image": "ubuntu:24.04", "pull_policy": "Sometimes"}, "pull_policy", "Sometimes"),
    (["ubuntu:24.04"], None, "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_BODIES)
async def test_bad_bodies_are_400_naming_the_field_and_store_nothing(
    hub, writer, body, field, message
):
    before = (await writer.get("api/v1/images")).json()
    response = await writer.put("api/v1/images/broken", json=body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["status"] == 400
    assert answer["field"] == field
    assert message in answer["error"]
    if field:
        assert answer["error"].startswith(f"{field}: ")
    assert (await writer.get("api/v1/images/broken")).status_code == 404
    assert (await writer.get("api/v1/images")).json() == before


async def test_not_json_and_bad_names_are_400(hub, writer):
    response = await writer.put(
        "api/v1/images/broken",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "error": "the body is not valid JSON (expecting property name enclosed in double "
        "quotes at line 1, column 2)",
        "field": None,
    }

    response = await writer.put("api/v1/images/Not_A_Slug", json={"image": "ubuntu:24.04"})
    assert response.status_code == 400
    assert response.json()["field"] == "name"
    assert "Not_A_Slug" not in await names(writer)


async def test_images_jupyter_is_the_list_and_no_image(hub, writer):
    """images/jupyter is the Jupyter list: a PUT or DELETE there is a method the list does
    not take (405 with Allow), and no image can take that name."""
    for method in ("PUT", "DELETE"):
        response = await writer.request(method, "api/v1/images/jupyter", json={"image": "u:1"})
        assert response.status_code == 405
        assert response.headers["allow"] == "GET"
        assert "no image can be called 'jupyter'" in response.json()["error"]
    assert (await writer.get("api/v1/images/jupyter")).json()[0]["name"] != "jupyter"
    assert "jupyter" not in await names(writer)
