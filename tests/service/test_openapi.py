"""schemathesis against hub_service/openapi.json and the live service behind a real hub:
every operation, with generated valid and invalid inputs, answers without a 5xx and as the
spec says (status code, content type, body schema, headers)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sys
import time
from pathlib import Path
from urllib.parse import urljoin
from xml.etree import ElementTree

import httpx
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
from hub_service.app import ThinkubeService
from hub_service.handlers import OPENAPI_PATH
from hub_service.jobs.handlers import job_routes
from hub_service.jobs.spec import GIB, JobLimits
from hub_service.jobs.store import ACTIVE, FINISHED
from hub_service.jobs.uploads import upload_routes
from hub_service.jobs.views import COMPAT_STATUS
from tests.hub_fixtures import ACCESS_SCOPE, IMAGE_WRITERS_ROLE, IMAGES_WRITE_SCOPE
from tests.jobs.test_jobs_api import token_of
from tests.kubesim.generator import populate
from tests.local.hubproc import local_hub

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
    base_url: str,
    token: str,
    path: str | None = None,
    max_examples: int = MAX_EXAMPLES,
    document: dict | None = None,
    path_regex: str | None = None,
) -> tuple[list[str], int]:
    """Every operation of `document` (the served one unless given; only those of `path` or
    matching `path_regex` if given), positive and negative cases; returns the failures and
    the number of requests made. Runs in a thread: a hub answering the service's token
    checks on the test's event loop must keep running."""
    if document is None:
        schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    else:
        schema = schemathesis.openapi.from_dict(document)
    if path is not None:
        schema = schema.include(path=path)
    if path_regex is not None:
        schema = schema.include(path_regex=path_regex)
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
        # A submission's validity (UTF-8 text, YAML) is more than a schema can say, so
        # schema-valid bytes may be refused: submissions are checked against the document
        # on a hub that runs jobs (test_the_jobs_routes_match_the_document_on_a_hub_that_
        # runs_jobs); every other operation here. So are training jobs (whether a config's
        # model and dataset exist is no schema's either): their answers are checked by
        # test_the_live_service_matches_its_openapi_document.
        "--exclude-name",
        "POST /api/submit",
        "--exclude-name",
        "POST /api/v1/jobs",
        "--exclude-name",
        "POST /api/v1/training-jobs",
        # Nor is whether a waiting server's pod asks for a GPU some node could hold: its
        # answers are checked by test_the_live_service_matches_its_openapi_document, and
        # the route end to end by tests/e2e/test_waiting_kubesim.py.
        "--exclude-name",
        "POST /api/v1/waiting",
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
    assert int(cases.get("tests")) >= 18  # every operation of the document


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


# --- the jobs routes, on a hub that runs jobs ---------------------------------------------------

JOB_PATHS = r"^/api/(v1/(jobs|queue|nodes)|submit|status/|results/|cancel/|nodes$|jobs$)"
# The test's hub takes jobs of at most this many seconds (each then ends within twice it):
# generated submissions cannot run for long.
TEST_MAX_EXPECTED_SECONDS = 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs_hub(tmp_path_factory):
    """`thinkube hub` (jobs run as processes on this machine), its service started with a
    small jobs_max_expected_seconds."""
    config = tmp_path_factory.mktemp("openapi-jobs-config") / "hub_config.py"
    # The hub's own configuration has just written the service's; this adds a line to it.
    config.write_text(
        "import json, os, pathlib\n"
        "settings = json.loads(pathlib.Path(os.environ['THINKUBE_HUB_SETTINGS']).read_text())\n"
        "with open(pathlib.Path(settings['data_dir']) / 'service_config.py', 'a') as f:\n"
        "    f.write('c.ThinkubeService.jobs_max_expected_seconds = "
        f"{TEST_MAX_EXPECTED_SECONDS}\\n')\n"
    )
    async with local_hub(tmp_path_factory.mktemp("openapi-jobs-hub"), config=config) as hub:
        yield hub


def narrowed_to_the_test_hub(document: dict) -> dict:
    """The document with expected_time bounded by the test hub's smaller maximum, so that
    generated submissions are accepted only when they end quickly."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    short = {"type": "string", "pattern": f"^[1-{TEST_MAX_EXPECTED_SECONDS}]s?$"}
    json_time = schemas["JobSubmission"]["properties"]["expected_time"]
    json_time["anyOf"] = [
        {"type": "number", "exclusiveMinimum": 0, "maximum": TEST_MAX_EXPECTED_SECONDS},
        short,
    ]
    json_time["example"] = "1s"
    form_time = schemas["JobSubmissionForm"]["properties"]["expected_time"]
    form_time.update(short, example="1s")
    return document


def check_real_jobs(base_url: str, token: str) -> list[str]:
    """Every jobs operation on jobs that exist (generated ids find none): submitted as JSON,
    as a form and through the older route, followed to the end; each answer checked against
    the document."""
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    session = requests.Session()
    headers = {"Authorization": f"token {token}"}
    failures: list[str] = []

    def call(path: str, method: str, **case_arguments) -> schemathesis.Response:
        case = schema[path][method].Case(**case_arguments)
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Exception, BaseExceptionGroup) as err:
            failures.append(f"{method} {path}: {err}")
        return response

    writes_artifacts = (
        "import os\n"
        "folder = os.environ['THINKUBE_ARTIFACTS_DIR']\n"
        "open(os.path.join(folder, 'out.txt'), 'w').write('documented')\n"
        "print('documented')\n"
    )
    submitted = call(
        "/api/v1/jobs",
        "POST",
        body={"script": writes_artifacts, "expected_time": 1, "name": "conformance"},
        media_type="application/json",
    )
    assert submitted.status_code == 201, submitted.text
    as_form = call(
        "/api/v1/jobs",
        "POST",
        body={"script": b"print('form')\n", "expected_time": "1s"},
        media_type="multipart/form-data",
    )
    assert as_form.status_code == 201, as_form.text
    older = call(
        "/api/submit",
        "POST",
        body={"code": b"print('older')\n", "config_file": b"expected_time: 1\nproject_id: p\n"},
        media_type="multipart/form-data",
    )
    assert older.status_code == 201, older.text
    ids = [submitted.json()["id"], as_form.json()["id"]]
    older_id = older.json()["job_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views = [call("/api/v1/jobs/{id}", "GET", path_parameters={"id": i}) for i in ids]
        if all(v.json()["status"] not in ("queued", "running") for v in views):
            break
        call("/api/v1/queue", "GET")
        time.sleep(0.5)
    for job_id in ids:
        one = {"path_parameters": {"id": job_id}}
        call("/api/v1/jobs/{id}/result", "GET", **one)
        text = call("/api/v1/jobs/{id}/logs", "GET", query={"follow": "false"}, **one)
        assert text.headers["content-type"][0].startswith("text/plain")
        events = call("/api/v1/jobs/{id}/logs", "GET", **one)
        assert events.headers["content-type"][0].startswith("text/event-stream")
        assert "event: end" in events.text
        call("/api/v1/jobs/{id}/cancel", "POST", **one)
    # Its artifacts: the list, the file whole, a range, a range outside it, HEAD, a bad path;
    # the other job wrote none.
    artifacts = call("/api/v1/jobs/{id}/artifacts", "GET", path_parameters={"id": ids[0]})
    assert artifacts.status_code == 200 and artifacts.json()["count"] == 1, artifacts.text
    one_file = {"path_parameters": {"id": ids[0], "path": "out.txt"}}
    whole = call("/api/v1/jobs/{id}/artifacts/{path}", "GET", **one_file)
    assert whole.status_code == 200 and whole.content == b"documented"
    for wanted, status in (("bytes=2-5", 206), ("bytes=100-", 416)):
        ranged = call(
            "/api/v1/jobs/{id}/artifacts/{path}", "GET", headers={"Range": wanted}, **one_file
        )
        assert ranged.status_code == status, ranged.text
    head = call("/api/v1/jobs/{id}/artifacts/{path}", "HEAD", **one_file)
    assert head.status_code == 200 and head.content == b""
    bad = call(
        "/api/v1/jobs/{id}/artifacts/{path}",
        "GET",
        path_parameters={"id": ids[0], "path": "a\x00b"},
    )
    assert bad.status_code == 400, bad.text
    none = call("/api/v1/jobs/{id}/artifacts", "GET", path_parameters={"id": ids[1]})
    assert none.status_code == 404, none.text
    for path, method in (
        ("/api/status/{job_id}", "GET"),
        ("/api/results/{job_id}", "GET"),
        ("/api/cancel/{job_id}", "POST"),
    ):
        call(path, method, path_parameters={"job_id": older_id})
    call("/api/v1/jobs", "GET", query={"status": "completed,failed", "limit": 5})
    call("/api/jobs", "GET", query={"status": "completed"})
    call("/api/v1/nodes", "GET")
    call("/api/nodes", "GET")
    session.close()
    return failures


async def cancel_everything_active(client) -> list[str]:
    """Cancel each of the token's queued and running jobs; their ids."""
    listed = await client.get("api/v1/jobs", params={"status": "queued,running", "limit": 500})
    active = [job["id"] for job in listed.json()["jobs"]]
    for job_id in active:
        response = await client.post(f"api/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
    return active


async def test_the_jobs_routes_match_the_document_on_a_hub_that_runs_jobs(jobs_hub):
    token = await token_of(jobs_hub, "alice")
    base_url = urljoin(jobs_hub.url, "services/thinkube-resources").rstrip("/")
    async with httpx.AsyncClient(
        base_url=base_url + "/", headers={"Authorization": f"token {token}"}, timeout=30
    ) as client:
        try:
            failures = await asyncio.to_thread(check_real_jobs, base_url, token)
            assert not failures, "\n\n".join(failures)
            document = narrowed_to_the_test_hub(json.loads(OPENAPI_PATH.read_text()))
            failures, calls = await asyncio.to_thread(
                run_schemathesis, base_url, token, document=document, path_regex=JOB_PATHS
            )
            assert not failures, "\n\n".join(failures)
            assert calls >= 16 * 2  # both modes of every jobs operation
            # generated submissions were queued, not only refused
            listed = (await client.get("api/v1/jobs", params={"limit": 1})).json()
            assert listed["total"] > 3
        finally:
            await cancel_everything_active(client)
        assert await cancel_everything_active(client) == []
        log = "".join(jobs_hub.output)
        assert " 500 " not in log and "Uncaught exception" not in log, log[-3000:]


async def test_the_document_states_the_jobs_bounds():
    """The jobs bounds in the document are the service's defaults (JobLimits, the
    ThinkubeService traits), so that what the document takes the service takes."""
    document = json.loads(OPENAPI_PATH.read_text())
    schemas = document["components"]["schemas"]
    limits = JobLimits()
    submission = schemas["JobSubmission"]["properties"]
    number = submission["expected_time"]["anyOf"][0]
    assert number["maximum"] == limits.max_expected_s
    assert number["maximum"] == ThinkubeService.jobs_max_expected_seconds.default_value
    assert submission["script"]["maxLength"] == ThinkubeService.jobs_max_script_bytes.default_value
    assert submission["gpus"]["maximum"] == limits.max_gpus
    assert submission["cpu"]["anyOf"][0]["maximum"] == limits.max_cpu
    assert submission["memory"]["anyOf"][0]["maximum"] * GIB == limits.max_memory
    assert submission["metadata"]["maxProperties"] == limits.max_metadata_entries
    assert submission["metadata"]["additionalProperties"]["maxLength"] == (
        limits.max_metadata_value
    )
    job_statuses = schemas["Job"]["properties"]["status"]["enum"]
    assert job_statuses == [*ACTIVE, *FINISHED]
    assert set(schemas["CompatStatus"]["properties"]["status"]["enum"]) == set(
        COMPAT_STATUS.values()
    )
    assert schemas["Estimate"]["properties"]["estimate"] == {
        "const": True,
        "description": "Always true: this is an estimate.",
    }
    # every route the service serves is in the document
    served = {
        "/" + pattern.removeprefix("/prefix/").replace(r"([^/]+)", "{}").replace("(.+)", "{}")
        for pattern, _ in [*job_routes("/prefix/"), *upload_routes("/prefix/")]
    }
    documented = {re.sub(r"\{[^}]+\}", "{}", path) for path in document["paths"]}
    assert served <= documented, served - documented
