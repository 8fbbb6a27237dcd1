"""`make dev`: kubesim, then a real JupyterHub with the thinkube-resources service against it.

    python examples/kubesim/dev.py [--port 8000] [--state-dir .dev] [--nodes 20]
                                   [--gpu-nodes 6] [--pods 300]

Starts kubesim (`python -m tests.kubesim --process-runtime`: pods run as real local
processes), waits for its kubeconfig, then runs `jupyterhub -f
examples/kubesim/jupyterhub_config.py` and prints the address once the login page answers.
Ctrl-C stops the hub first (its clean-up deletes the servers' pods through kubesim), then
kubesim.

The state (kubeconfig, the hub's database and secrets, the image catalog) lives in
`--state-dir`, default `$THINKUBE_DEV_DIR` or `.dev/` in this checkout; the hub listens on
`--port`, default `$THINKUBE_HUB_PORT` or 8000 when it is free, else a free port; the
hub's internal ports are always free ones. So two checkouts can run `make dev` side by side.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("jupyterhub_config.py")
PROG = "make dev"
STOP_WITHIN_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None, help="the hub's port (8000 if free)")
    parser.add_argument("--state-dir", type=Path, default=None, help="where state lives (.dev/)")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--gpu-nodes", type=int, default=6)
    parser.add_argument("--pods", type=int, default=300)
    return parser.parse_args(argv)


def choose_port(asked: int | None) -> int:
    if asked is None and os.environ.get("THINKUBE_HUB_PORT"):
        asked = int(os.environ["THINKUBE_HUB_PORT"])
    if asked is not None:
        if not port_is_free(asked):
            raise SystemExit(f"{PROG}: 127.0.0.1:{asked} is in use: choose another port")
        return asked
    return 8000 if port_is_free(8000) else free_port()


def wait_for_kubeconfig(path: Path, kubesim: subprocess.Popen, within_s: float = 60) -> str:
    """kubesim's API address, once its kubeconfig is written in full."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if kubesim.poll() is not None:
            raise SystemExit(f"{PROG}: kubesim exited ({kubesim.returncode}) before it was ready")
        try:
            return yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
        except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
            time.sleep(0.1)
    raise SystemExit(f"{PROG}: kubesim did not write {path} within {within_s:.0f}s")


RUNNING = b"JupyterHub is now running at "


class HubOutput:
    """Passes the hub's output through, line by line, and notes when JupyterHub says it has
    started (from then on it stops cleanly on SIGINT)."""

    def __init__(self, hub: subprocess.Popen):
        self.running = threading.Event()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._copy, args=(hub.stdout,), daemon=True)
        self._thread.start()

    def _copy(self, stream) -> None:
        for line in stream:
            self.write(line)
            if RUNNING in line:
                self.running.set()

    def write(self, data: bytes) -> None:
        with self.lock:  # one write per line: no line lands inside another
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def finish(self) -> None:
        self._thread.join(5)


def wait_until_running(url: str, hub: subprocess.Popen, output: HubOutput, within_s=180) -> bool:
    """True once JupyterHub has started and its login page answers 200."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and hub.poll() is None:
        if output.running.wait(0.2):
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
    return False


def stop(process: subprocess.Popen, sig: int, within_s: float) -> int:
    """Signal `process` and wait for it; SIGKILL after `within_s`."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(within_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = (args.state_dir or Path(os.environ.get("THINKUBE_DEV_DIR") or REPO / ".dev")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    port = choose_port(args.port)
    kubeconfig = state / "kubeconfig"
    kubeconfig.unlink(missing_ok=True)

    # Ctrl-C at the terminal reaches this process only (kubesim and the hub each run in a
    # session of their own): it stops the hub, and then kubesim, in that order.
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(signal.SIGINT))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(signal.SIGTERM))

    kubesim = subprocess.Popen(
        [sys.executable, "-m", "tests.kubesim", "--port", "0", "--nodes", str(args.nodes)]
        + ["--gpu-nodes", str(args.gpu_nodes), "--pods", str(args.pods), "--process-runtime"]
        + ["--kubeconfig", str(kubeconfig)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    hub = None
    try:
        kubesim_url = wait_for_kubeconfig(kubeconfig, kubesim)
        if stopping:  # Ctrl-C before the hub was started: only kubesim to stop
            return 0
        env = {
            **os.environ,
            "THINKUBE_DEV_DIR": str(state),
            "THINKUBE_KUBECONFIG": str(kubeconfig),
            "KUBECONFIG": str(kubeconfig),  # what ThinkubeSpawner's Kubernetes client reads
            "THINKUBE_HUB_PORT": str(port),
            "THINKUBE_HUB_API_PORT": str(free_port()),
            "THINKUBE_PROXY_API_PORT": str(free_port()),
            "THINKUBE_SERVICE_PORT": str(free_port()),
        }
        jupyterhub = Path(sys.executable).parent / "jupyterhub"
        hub = subprocess.Popen(
            [str(jupyterhub), "-f", str(CONFIG)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output = HubOutput(hub)
        url = f"http://127.0.0.1:{port}/"
        if wait_until_running(url + "hub/login", hub, output):
            output.write(
                f"{PROG}: kubesim at {kubesim_url} ({args.nodes} nodes, {args.gpu_nodes} with "
                f"GPUs); state in {state}; Ctrl-C stops the hub, then kubesim.\n"
                f"{PROG}: open {url} and log in with any user name and any password "
                "(admin may register images).\n".encode()
            )
        while hub.poll() is None and kubesim.poll() is None and not stopping:
            time.sleep(0.2)
        if kubesim.poll() is not None and hub.poll() is None:
            output.write(
                f"{PROG}: kubesim exited ({kubesim.returncode}); stopping the hub\n".encode()
            )
        if hub.poll() is None:
            # A hub still starting has no signal handlers yet: SIGINT would leave its proxy
            # and service behind. Let it finish starting first.
            output.running.wait(STOP_WITHIN_S)
    finally:
        # The hub first, while kubesim still answers its clean-up; then kubesim.
        code = stop(hub, signal.SIGINT, STOP_WITHIN_S) if hub else 1
        if hub:
            output.finish()
        stop(kubesim, signal.SIGTERM, STOP_WITHIN_S)
    return 0 if stopping and code in (0, -signal.SIGINT) else code


if __name__ == "__main__":
    sys.exit(main())
