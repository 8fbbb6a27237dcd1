"""What a RunPod pod runs for a job of the hub: the job's script, then its files and its exit
code sent back to the hub's service.

The pod's image need not have this project installed: the service sends this module's own
source in the pod's environment (`TK_JOB_RUNNER`) and the pod's command runs it with the
image's Python (`python3 -c "import os; exec(os.environ['TK_JOB_RUNNER'])"`). So it is one
self-contained file that needs nothing but Python's standard library (3.8 or later, as the
images have it).

What it does, from the environment the service gave the pod:

1. decodes the script (`TK_JOB_SCRIPT`: zlib-compressed, base64) into a fresh folder and
   runs it with this Python, its output going to the pod's log (RunPod's log stream), with
   `THINKUBE_ARTIFACTS_DIR` naming a folder for what it produces and none of the `TK_JOB_*`
   entries (the upload token among them) in its environment;
2. at the job's deadline (`TK_JOB_DEADLINE`, seconds since the epoch) ends it (SIGTERM to its
   process group, SIGKILL after a grace): the reason is then DeadlineExceeded;
3. uploads every regular file under `THINKUBE_ARTIFACTS_DIR` (`PUT <TK_JOB_UPLOAD_URL>
   artifacts/<path>` with its SHA-256), then the result (`POST <TK_JOB_UPLOAD_URL>result`:
   exit code, reason), each with the job's token (`TK_JOB_TOKEN`) in the Authorization
   header, never in a URL or a log line; a request that fails for want of an answer (the
   network, a 5xx, 429) is retried with a growing wait;
4. exits with the script's exit code (128 + the signal for one ended by a signal).

A pod stopped from outside (the job cancelled, the pod ended by RunPod) passes SIGTERM on
to the script and reports nothing: its job is ended by whoever stopped it, or found lost.

The service terminates the pod once the result has arrived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

ENV_PREFIX = "TK_JOB_"
ARTIFACTS_ENV = "THINKUBE_ARTIFACTS_DIR"
# How long a script ended at its deadline has to stop after SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0
REQUEST_TIMEOUT_S = 60.0
UPLOAD_ATTEMPTS = 6
RESULT_ATTEMPTS = 10
MAX_RETRY_WAIT_S = 60.0
# Statuses worth asking again: the service was not there, busy, or behind a failing proxy.
RETRIED_STATUSES = (408, 425, 429, 500, 502, 503, 504)


def encode_script(script: str) -> str:
    """The script as it travels in the pod's environment: zlib-compressed, base64."""
    return base64.b64encode(zlib.compress(script.encode("utf-8"), 9)).decode("ascii")


def decode_script(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text.encode("ascii")))


def say(message: str) -> None:
    """A line of the runner's own in the job's log (never a secret)."""
    print(f"[thinkube] {message}", file=sys.stderr, flush=True)


def script_environment(environ: dict, artifacts: str) -> dict:
    """The script's environment: the pod's, without the runner's own entries, plus the
    artifacts folder."""
    env = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
    env[ARTIFACTS_ENV] = artifacts
    env["PYTHONUNBUFFERED"] = "1"
    return env


def exit_code_of(returncode: int) -> int:
    """A shell's way: 128 + the signal for a process a signal ended."""
    return 128 - returncode if returncode < 0 else returncode


def run_script(argv: list, cwd: str, env: dict, deadline: float | None) -> tuple:
    """Run it until it ends or the deadline comes: (exit code, reason). The reason is None
    when the pod was stopped from outside (the job cancelled, the pod ended by RunPod):
    then there is nothing to report."""
    child = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
    stopped = []

    def forward(signum, _frame):
        try:
            os.killpg(child.pid, signum)
        except OSError:
            pass

    def stopping(signum, frame):  # the pod is being stopped: the script is told too
        stopped.append(signum)
        forward(signum, frame)

    previous = signal.signal(signal.SIGTERM, stopping)
    reason = None
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.time())
            try:
                returncode = child.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                reason = "DeadlineExceeded"
                say("the job reached its deadline: stopping it")
                forward(signal.SIGTERM, None)
                try:
                    returncode = child.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    forward(signal.SIGKILL, None)
                    returncode = child.wait()
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = exit_code_of(returncode)
    if stopped:
        return code, None
    if reason is None:
        reason = "Completed" if code == 0 else "Failed"
    return code, reason


class Refused(Exception):
    """The service answered no (4xx): asking again cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read().decode("utf-8", "replace"))
        return str(body.get("error") or error.reason)
    except (ValueError, AttributeError, OSError):
        return str(error.reason)


def send(request_for, attempts: int, retry_s: float, what: str):
    """Send the request `request_for()` makes (a new one each try), retrying what failed
    for want of an answer; the parsed JSON answer. Refused for a 4xx; the last error after
    the last attempt."""
    wait = retry_s
    for attempt in range(1, attempts + 1):
        request = request_for()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                data = response.read()
                return json.loads(data) if data else {}
        except urllib.error.HTTPError as err:
            if err.code not in RETRIED_STATUSES:
                raise Refused(err.code, _error_text(err)) from None
            problem = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            problem = type(err).__name__
        finally:
            close = getattr(request.data, "close", None)
            if close is not None:
                close()  # a file being uploaded
        if attempt == attempts:
            raise OSError(f"{what}: no answer after {attempts} attempts (last: {problem})")
        say(f"{what} failed ({problem}); trying again in {wait:.0f}s")
        time.sleep(wait)
        wait = min(MAX_RETRY_WAIT_S, wait * 2)
    raise AssertionError("unreachable")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(folder: str) -> list:
    """The regular files under `folder` as (path, path relative to it with '/'), sorted;
    links are not followed (what a job links to is not what it made)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            found.append((path, relative))
    return found


def upload_artifacts(base_url: str, token: str, folder: str, retry_s: float) -> tuple:
    """Each file under `folder`, one request each: (files sent, files that failed)."""
    sent, failed = 0, 0
    for path, relative in artifact_files(folder):
        size = os.path.getsize(path)
        digest = sha256_of(path)
        url = base_url + "artifacts/" + urllib.parse.quote(relative, safe="/")

        def request_for(path=path, url=url, size=size, digest=digest):
            return urllib.request.Request(
                url,
                data=open(path, "rb"),  # closed by send once sent
                method="PUT",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                    "X-Content-SHA256": digest,
                },
            )

        try:
            send(request_for, UPLOAD_ATTEMPTS, retry_s, f"uploading {relative}")
            sent += 1
        except Refused as err:
            failed += 1
            say(f"{relative} was refused (HTTP {err.status}): {err}")
        except OSError as err:
            failed += 1
            say(str(err))
    return sent, failed


def report_result(base_url: str, token: str, result: dict, retry_s: float) -> bool:
    """Send the result; True once the service has it."""
    body = json.dumps(result).encode("utf-8")

    def request_for():
        return urllib.request.Request(
            base_url + "result",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )

    try:
        send(request_for, RESULT_ATTEMPTS, retry_s, "reporting the result")
        return True
    except Refused as err:
        say(f"the result was refused (HTTP {err.status}): {err}")
    except OSError as err:
        say(str(err))
    return False


def main(environ=None) -> int:
    environ = dict(os.environ if environ is None else environ)
    try:
        script = decode_script(environ["TK_JOB_SCRIPT"])
        base_url = environ["TK_JOB_UPLOAD_URL"]
        token = environ["TK_JOB_TOKEN"]
    except (KeyError, ValueError, zlib.error) as err:
        say(f"this pod was not given a job to run ({type(err).__name__})")
        return 2
    if not base_url.endswith("/"):
        base_url += "/"
    name = os.path.basename(environ.get("TK_JOB_SCRIPT_NAME") or "") or "script.py"
    deadline = float(environ["TK_JOB_DEADLINE"]) if environ.get("TK_JOB_DEADLINE") else None
    retry_s = float(environ.get("TK_JOB_RETRY_SECONDS") or 2.0)
    workdir = tempfile.mkdtemp(prefix="thinkube-job-")
    artifacts = os.path.join(workdir, "artifacts")
    os.makedirs(artifacts)
    script_path = os.path.join(workdir, name)
    with open(script_path, "wb") as handle:
        handle.write(script)
    env = script_environment(environ, artifacts)
    code, reason = run_script([sys.executable, script_path], workdir, env, deadline)
    if reason is None:
        say("the pod is being stopped: the job's end is not reported")
        return code
    sent, failed = upload_artifacts(base_url, token, artifacts, retry_s)
    if sent or failed:
        say(f"{sent} artifact(s) uploaded" + (f", {failed} not" if failed else ""))
    result = {"exit_code": code, "reason": reason}
    if failed:
        result["message"] = f"{failed} artifact(s) could not be uploaded"
    report_result(base_url, token, result, retry_s)
    return code


if __name__ == "__main__":
    sys.exit(main())
