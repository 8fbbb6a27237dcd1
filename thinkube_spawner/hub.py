"""`thinkube hub`: JupyterHub on this one machine, with the spawn form and live availability.

    thinkube hub [--ip 127.0.0.1] [--port 8000] [--data-dir ~/.local/share/thinkube-hub]

Runs JupyterHub with ThinkubeLocalSpawner and the thinkube-resources service (inventory
`local`) managed by the hub. People log in with any user name and one shared password,
generated on first start, kept in the data directory and printed at every start. Ctrl-C
stops the hub, the service and every server it started (JupyterHub's own clean-up).

The hub's configuration is hub_config.py next to this module, fed by a settings file this
command writes into the data directory; `jupyterhub -f` can load it the same way (see
docs/local.md for switching to PAM or OAuth logins).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

from thinkube_spawner.runpod.commands import CommandError

HUB_CONFIG = Path(__file__).with_name("hub_config.py")
SETTINGS_ENV = "THINKUBE_HUB_SETTINGS"
PASSWORD_FILE = "password"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "thinkube-hub"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hub",
        help="run JupyterHub on this machine with the GPU-aware spawn form",
        description="Run JupyterHub in single-machine mode: the thinkube spawn form, live "
        "CPU/memory/GPU availability of this machine, servers pinned to their CPUs and GPUs. "
        "Ctrl-C stops it and every server it started.",
    )
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the hub keeps its database, secrets, password and users' folders "
        f"(default: {default_data_dir()})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a JupyterHub configuration file loaded after thinkube's own, to change or add "
        "settings (a PAM or OAuth login, ThinkubeLocalSpawner options; see docs/local.md)",
    )
    parser.set_defaults(func=run_hub)


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


def _port_is_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def shared_password(data_dir: Path) -> str:
    """The login password: made on first start (only its owner may read the file)."""
    path = data_dir / PASSWORD_FILE
    if path.exists():
        password = path.read_text().strip()
        if len(password) >= 8:
            return password
    password = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def hub_settings(ip: str, port: int, data_dir: Path, extra_config: Path | None = None) -> dict:
    """What hub_config.py reads: addresses (internal ones on free ports, so two hubs can run
    side by side), where things live, and the person's own configuration file if any."""
    return {
        "ip": ip,
        "port": port,
        "data_dir": str(data_dir),
        "hub_port": free_port(),
        "proxy_api_port": free_port(),
        "service_port": free_port(),
        "python": sys.executable,
        "extra_config": str(extra_config) if extra_config else None,
    }


def run_hub(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be between 1 and 65535, not {args.port}")
    extra_config = args.config.expanduser().resolve() if args.config else None
    if extra_config and not extra_config.is_file():
        raise CommandError(f"--config {args.config}: no such file")
    if shutil.which("configurable-http-proxy") is None:
        raise CommandError(
            "configurable-http-proxy is not on PATH: run `make run` in the thinkube-hub "
            "checkout, or `npm install -g configurable-http-proxy`"
        )
    if importlib.util.find_spec("jupyter_server") is None:
        raise CommandError(
            "jupyter_server is not installed in this Python, so no server could start: "
            "pip install 'thinkube-hub[local]' (make run does)"
        )
    if not _port_is_free(args.ip, args.port):
        raise CommandError(f"{args.ip}:{args.port} is in use: choose another with --port")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
    except OSError as err:
        raise CommandError(f"cannot use {data_dir} as the data directory: {err.strerror}") from None
    settings = hub_settings(args.ip, args.port, data_dir, extra_config)
    settings_file = data_dir / "settings.json"
    settings_file.write_text(json.dumps(settings, indent=2) + "\n")
    password = shared_password(data_dir)
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    print(
        f"thinkube hub: open http://{host}:{args.port}/ and log in with any user name and "
        f"the password: {password}\n"
        f"thinkube hub: data in {data_dir}; Ctrl-C stops the hub and every server it started.",
        flush=True,
    )
    env = {**os.environ, SETTINGS_ENV: str(settings_file)}
    command = [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)]
    # The hub takes over this process: Ctrl-C reaches it directly, and its clean-up stops
    # the proxy, the service and every server.
    os.chdir(data_dir)
    os.execve(sys.executable, command, env)
    return 0  # not reached
