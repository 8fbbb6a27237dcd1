"""schemathesis against hub_service/openapi.json and the live service behind a real hub:
every operation, with generated valid and invalid inputs, answers without a 5xx and as the
spec says (status code, content type, body schema, headers)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from xml.etree import ElementTree

import hypothesis
import hypothesis.errors
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hub_service import catalog
from hub_service.handlers import OPENAPI_PATH
from tests.hub_fixtures import ACCESS_SCOPE, IMAGE_WRITERS_ROLE, IMAGES_WRITE_SCOPE
from tests.kubesim.generator import populate

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 12  # per operation and mode: enough to find shape errors, fast enough to keep


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(module_kubesim, module_hub_factory):
    sim = await module_kubesim()
    populate(sim, nodes=6, gpu_nodes=6, pods=40)  # every GPU model of the generator
    return await module_hub_factory(sim=sim)


def run_schemathesis(
    base_url: str, token: str, path: str | None = None, max_examples: int = MAX_EXAMPLES
) -> tuple[list[str], int]:
    """Every operation (or those of `path`), positive and negative cases; returns the
    failures and the number of requests made. Runs in a thread: the hub answering the
    service's token checks lives on the test's event loop, which must keep running."""
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    if path is not None:
        schema = schema.include(path=path)
    session = requests.Session()
    headers = {"Authorization": f"token {token}"}
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                nonlocal calls
                # the schema's security is the Authorization header; send a valid token
                response = case.call(
                    base_url=base_url, session=session, headers=headers, timeout=10
                )
                calls += 1
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no input to get wrong (health, ...)
            # schemathesis' FailureGroup is a BaseExceptionGroup
            except (Exception, BaseExceptionGroup) as err:
                failures.append(f"{operation.label} [{mode.value}]: {err}")
    session.close()
    return failures, calls


async def test_the_live_service_matches_its_openapi_document(hub):
    token = hub.token(
        "schemathesis", [ACCESS_SCOPE, IMAGES_WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE]
    )
    base_url = hub.service_url.rstrip("/")
    failures, calls = await asyncio.to_thread(run_schemathesis, base_url, token)
    assert not failures, "\n\n".join(failures)
    assert calls >= 13  # at least one request per operation
    # the service it checked is the one the document describes
    served = await hub.client(token).get("api/v1/openapi.json")
    assert served.json() == json.loads(OPENAPI_PATH.read_text())


CLI_MAX_EXAMPLES = 50  # per operation, in each phase that generates


async def run_schemathesis_cli(base_url: str, token: str, workdir: Path) -> tuple[int, str]:
    """`schemathesis run --checks all` against the live service: the examples, coverage
    (boundaries of every constraint, methods the document does not list) and fuzzing
    phases, positive and negative, seeded so that a failure reproduces."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(OPENAPI_PATH),
        "--url",
        base_url,
        "--header",
        f"Authorization: token {token}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(CLI_MAX_EXAMPLES),
        "--seed",
        "20260601",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-junit-path",
        str(workdir / "junit.xml"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=workdir,  # schemathesis keeps a cache in the folder it runs in
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode, output.decode(errors="replace")


async def test_all_checks_find_no_server_error_and_no_mismatch(hub, tmp_path):
    """Every check schemathesis has (`--checks all`): no 5xx, answers as documented, schema-
    valid requests accepted and invalid ones refused (so every bound the document states
    is the service's), 405 with `Allow` for methods it does not list, no answer without
    credentials."""
    token = hub.token(
        "schemathesis-cli", [ACCESS_SCOPE, IMAGES_WRITE_SCOPE], roles_=[IMAGE_WRITERS_ROLE]
    )
    returncode, output = await run_schemathesis_cli(hub.service_url.rstrip("/"), token, tmp_path)
    assert returncode == 0, output
    assert token not in output
    cases = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert int(cases.get("tests")) >= 15  # every operation of the document


async def test_the_document_states_the_catalogs_own_bounds():
    """The bounds and patterns in the document are the ones the catalog applies (the same
    constants), so that what schemathesis finds valid is what the service takes."""
    schemas = json.loads(OPENAPI_PATH.read_text())["components"]["schemas"]
    for name in ("Image", "ImageInput"):
        entry = schemas[name]["properties"]
        for field, limit in (("display_name", catalog.MAX_DISPLAY_NAME), ("kind", 63)):
            assert (entry[field]["minLength"], entry[field]["maxLength"]) == (1, limit)
        assert entry["display_name"]["pattern"] == catalog.LINE_PATTERN
        assert entry["kind"]["pattern"] == catalog.SLUG_PATTERN
        assert entry["description"]["maxLength"] == catalog.MAX_DESCRIPTION
        assert entry["description"]["pattern"] == catalog.TEXT_PATTERN
        assert entry["image"]["maxLength"] == catalog.MAX_IMAGE_REFERENCE
        assert entry["image"]["pattern"] == catalog.IMAGE_REFERENCE_PATTERN
        assert entry["tags"]["maxItems"] == catalog.MAX_TAGS
        assert entry["tags"]["items"]["maxLength"] == catalog.MAX_TAG
        assert entry["tags"]["items"]["pattern"] == catalog.LINE_PATTERN
        assert entry["pull_policy"]["enum"] == list(catalog.PULL_POLICIES)
    assert "name" in schemas["Image"]["properties"]
    assert "name" not in schemas["ImageInput"]["properties"]
    metadata = schemas["ImageMetadata"]["properties"]
    assert (metadata["cpu_limit"]["minimum"], metadata["cpu_limit"]["maximum"]) == (
        float(catalog.CPU_LIMIT_MIN),
        float(catalog.CPU_LIMIT_MAX),
    )
    assert metadata["mem_limit"]["pattern"] == catalog.MEMORY_PATTERN
    assert metadata["mem_limit"]["maxLength"] == catalog.MAX_MEMORY_TEXT
    cloud_image = metadata["cloud_image"]["oneOf"][0]
    assert cloud_image["pattern"] == catalog.IMAGE_REFERENCE_PATTERN
    assert cloud_image["maxLength"] == catalog.MAX_IMAGE_REFERENCE
