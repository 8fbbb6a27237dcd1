"""The job runner a RunPod pod runs (thinkube_core/job_runner.py), run as the pod runs it:
its own source from the environment, with this machine's Python, against a small HTTP
server standing in for the service's upload routes (the whole path through the real service
is in test_runpod_jobs.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from thinkube_core import job_runner

TOKEN = "job-token-" + "x" * 32
RUNNER = Path(job_runner.__file__).read_text()


class Uploads:
    """What the stand-in service received, and the trouble it makes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.results: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.fail_first: set[str] = set()  # these paths answer 503 the first time
        self.refuse: set[str] = set()  # these paths answer 400
        self.authorizations: set[str] = set()


class ArtifactHandler(web.RequestHandler):
    def initialize(self, uploads: Uploads) -> None:
        self.uploads = uploads

    def put(self, path: str) -> None:
        uploads = self.uploads
        uploads.authorizations.add(self.request.headers.get("Authorization", ""))
        uploads.attempts[path] = uploads.attempts.get(path, 0) + 1
        if path in uploads.fail_first and uploads.attempts[path] == 1:
            self.set_status(503)
            self.finish({"error": "busy"})
            return
        if path in uploads.refuse:
            self.set_status(400)
            self.finish({"error": "not this one"})
            return
        body = self.request.body
        assert self.request.headers["X-Content-SHA256"] == hashlib.sha256(body).hexdigest()
        uploads.files[path] = body
        self.set_status(201)
        self.finish({"path": path, "size": len(body)})


class ResultHandler(web.RequestHandler):
    def initialize(self, uploads: Uploads) -> None:
        self.uploads = uploads

    def post(self) -> None:
        self.uploads.authorizations.add(self.request.headers.get("Authorization", ""))
        self.uploads.results.append(json.loads(self.request.body))
        self.finish({"status": "accepted"})


@pytest.fixture
async def service():
    uploads = Uploads()
    app = web.Application(
        [
            (r"/api/v1/jobs/j-1/upload/artifacts/(.+)", ArtifactHandler, {"uploads": uploads}),
            (r"/api/v1/jobs/j-1/upload/result", ResultHandler, {"uploads": uploads}),
        ]
    )
    server = HTTPServer(app)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    uploads.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/api/v1/jobs/j-1/upload/"
    yield uploads
    server.stop()


async def run_pod(uploads: Uploads, script: str, **env: str) -> tuple[int, str]:
    """The pod's command, with the environment the service gives a pod."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "THINKUBE_JOB_ID": "j-1",
        "TK_JOB_RUNNER": RUNNER,
        "TK_JOB_SCRIPT": job_runner.encode_script(textwrap.dedent(script)),
        "TK_JOB_SCRIPT_NAME": "train.py",
        "TK_JOB_UPLOAD_URL": uploads.url,
        "TK_JOB_TOKEN": TOKEN,
        "TK_JOB_RETRY_SECONDS": "0.05",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import os; exec(os.environ['TK_JOB_RUNNER'])",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, output.decode()


def test_a_script_survives_the_trip_through_the_environment():
    script = "print('héllo')\n" * 500
    encoded = job_runner.encode_script(script)
    assert encoded.isascii() and len(encoded) < len(script) / 10
    assert job_runner.decode_script(encoded).decode() == script


async def test_the_runner_runs_the_script_uploads_its_files_and_reports_its_exit_code(service):
    service.fail_first.add("model/weights.bin")
    code, output = await run_pod(
        service,
        """
        import os, sys
        folder = os.environ["THINKUBE_ARTIFACTS_DIR"]
        os.makedirs(os.path.join(folder, "model"))
        with open(os.path.join(folder, "model", "weights.bin"), "wb") as f:
            f.write(bytes(range(256)) * 100)
        with open(os.path.join(folder, "metrics.json"), "w") as f:
            f.write('{"loss": 0.5}')
        os.symlink("/etc/passwd", os.path.join(folder, "link"))
        print("token seen:", "TK_JOB_TOKEN" in os.environ, "script seen:", "TK_JOB_SCRIPT" in os.environ)
        print("job", os.environ["THINKUBE_JOB_ID"], "as", os.path.basename(sys.argv[0]))
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """,
    )
    assert code == 3, output
    assert "token seen: False script seen: False" in output
    assert "job j-1 as train.py" in output and "to stderr" in output
    assert service.files == {
        "model/weights.bin": bytes(range(256)) * 100,
        "metrics.json": b'{"loss": 0.5}',
    }  # the link was not followed
    assert service.attempts["model/weights.bin"] == 2  # a 503 is asked again
    assert service.results == [{"exit_code": 3, "reason": "Failed"}]
    assert service.authorizations == {f"Bearer {TOKEN}"}
    assert TOKEN not in output
    assert "2 artifact(s) uploaded" in output


async def test_a_refused_file_is_not_asked_again_and_the_result_says_so(service):
    service.refuse.add("bad.txt")
    code, output = await run_pod(
        service,
        """
        import os
        for name in ("bad.txt", "good.txt"):
            with open(os.path.join(os.environ["THINKUBE_ARTIFACTS_DIR"], name), "w") as f:
                f.write(name)
        """,
    )
    assert code == 0, output
    assert service.attempts["bad.txt"] == 1
    assert service.files == {"good.txt": b"good.txt"}
    assert service.results == [
        {
            "exit_code": 0,
            "reason": "Completed",
            "message": "1 artifact(s) could not be uploaded",
        }
    ]
    assert "bad.txt was refused (HTTP 400): not this one" in output


async def test_at_its_deadline_the_script_is_stopped_and_the_reason_says_so(service):
    began = time.monotonic()
    code, output = await run_pod(
        service,
        """
        import os, time
        open(os.path.join(os.environ["THINKUBE_ARTIFACTS_DIR"], "partial.txt"), "w").write("so far")
        print("working", flush=True)
        time.sleep(60)
        """,
        TK_JOB_DEADLINE=f"{time.time() + 1.5:.3f}",
    )
    assert time.monotonic() - began < 20
    assert code == 128 + 15, output  # ended by SIGTERM
    assert "working" in output and "reached its deadline" in output
    assert service.files == {"partial.txt": b"so far"}  # what it made by then still comes back
    assert service.results == [{"exit_code": 143, "reason": "DeadlineExceeded"}]


async def test_a_pod_without_a_job_says_so_and_reports_nothing(service):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import os; exec(os.environ['TK_JOB_RUNNER'])",
        env={"PATH": os.environ["PATH"], "TK_JOB_RUNNER": RUNNER},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 2
    assert "not given a job to run" in output.decode()
    assert service.results == []
