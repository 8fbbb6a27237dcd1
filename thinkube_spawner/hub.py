"""`thinkube hub`: JupyterHub on this one machine, with the spawn form and live availability.

    thinkube hub [--ip 127.0.0.1] [--port 8000] [--data-dir ~/.local/share/thinkube-hub]
                 [--ssl-cert CERT --ssl-key KEY] [--config FILE]

Runs JupyterHub with ThinkubeLocalSpawner and the thinkube-resources service (inventory
`local`) managed by the hub. People log in with any user name and one shared password,
generated on first start and kept in the data directory. Once the hub answers, it prints
the address and the password as the last lines of its start. Ctrl-C stops the hub, the
service and every server it started (JupyterHub's own clean-up).

Servers never run as root: a hub started as root gives each person a system account of
their own (accounts.py) and runs their server as it; otherwise every server runs as the
hub's own user.

The hub's configuration is hub_config.py next to this module, fed by a settings file this
command writes into the data directory; `jupyterhub -f` can load it the same way (see
docs/local.md for switching to PAM or OAuth logins).
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import sys
from pathlib import Path

from thinkube_core.accounts import DEFAULT_PREFIX, closed_to_others
from thinkube_spawner.runpod.commands import CommandError

HUB_CONFIG = Path(__file__).with_name("hub_config.py")
SETTINGS_ENV = "THINKUBE_HUB_SETTINGS"
PASSWORD_FILE = "password"
LOCK_FILE = "hub.lock"
PROG = "thinkube hub"


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
        "--ssl-cert",
        type=Path,
        default=None,
        help="TLS certificate (PEM) to serve HTTPS with; needs --ssl-key. Use it whenever "
        "--ip is not 127.0.0.1",
    )
    parser.add_argument("--ssl-key", type=Path, default=None, help="the certificate's key (PEM)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a JupyterHub configuration file loaded after thinkube's own, to change or add "
        "settings (a PAM or OAuth login, ThinkubeLocalSpawner options; see docs/local.md)",
    )
    parser.set_defaults(func=run_hub)


# --- pure: addresses and what is printed ----------------------------------------------------


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def local_address(ip: str) -> str:
    """How this machine reaches a hub listening on `ip` (all addresses: loopback)."""
    if ip in ("", "0.0.0.0"):
        return "127.0.0.1"
    if ip == "::":
        return "[::1]"
    return f"[{ip}]" if ":" in ip else ip


def public_url(ip: str, port: int, tls: bool, hostname: str) -> str:
    """The address to open: the machine's name when the hub listens on all addresses."""
    host = hostname if ip in ("", "0.0.0.0", "::") else local_address(ip)
    return f"{'https' if tls else 'http'}://{host}:{port}/"


def plain_http_warning(ip: str) -> str:
    return (
        f"{PROG}: WARNING: listening on {ip} over plain HTTP: the password, cookies and "
        "notebooks cross the network unencrypted. Serve HTTPS with --ssl-cert CERT "
        "--ssl-key KEY, or listen on 127.0.0.1 behind a TLS proxy."
    )


def banner_lines(settings: dict, password: str) -> list[str]:
    """What `thinkube hub` prints once the hub answers; the last line has the address and
    the password."""
    tls = bool(settings.get("ssl_cert"))
    url = public_url(settings["ip"], settings["port"], tls, settings.get("hostname") or "")
    if settings.get("server_accounts") and settings.get("system_users"):
        who = f"{PROG}: each person's server runs as their own system user (system_users)."
    elif settings.get("server_accounts"):
        who = (
            f"{PROG}: each person's server runs as a system account of their own "
            f"({settings.get('account_prefix', DEFAULT_PREFIX)}<name>, made at their first start)."
        )
    else:
        who = (
            f"{PROG}: every server runs as {settings.get('hub_user') or 'this user'}, the hub's "
            "own account: people who log in can read each other's files."
        )
    lines = [
        f"{PROG}: data in {settings['data_dir']}; Ctrl-C stops the hub and every server it "
        "started.",
        who,
        *settings.get("notices", []),
    ]
    if not tls and not is_loopback(settings["ip"]):
        lines.append(plain_http_warning(settings["ip"]))
    lines.append(f"{PROG}: open {url} and log in with any user name and the password: {password}")
    return lines


# --- checks and files -------------------------------------------------------------------------


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


def port_in_use_error(ip: str, port: int) -> str:
    """The message for a taken port, naming a free one to use instead."""
    instead = next((p for p in range(port + 1, min(port + 100, 65536)) if _port_is_free(ip, p)), 0)
    message = f"{ip}:{port} is in use: choose another with --port"
    if instead:
        hint = f"--port {instead}"
        if os.environ.get("MAKELEVEL"):  # started by `make run`
            hint = f'make run RUN_ARGS="--port {instead}"'
        message += f", e.g. {hint}"
    return message


def check_tls(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """The certificate and key files, resolved, once they load together; None for none."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CommandError("--ssl-cert and --ssl-key go together: give both")
    cert, key = cert.expanduser().resolve(), key.expanduser().resolve()
    for option, path in (("--ssl-cert", cert), ("--ssl-key", key)):
        if not path.is_file():
            raise CommandError(f"{option} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as err:
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)
        raise CommandError(
            f"--ssl-cert {cert} and --ssl-key {key} do not load together ({reason}): give a "
            "PEM certificate and its own private key"
        ) from None
    return str(cert), str(key)


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


def hold_data_dir(data_dir: Path) -> int:
    """Lock the data directory for this hub's lifetime (the lock passes to JupyterHub with
    the process), so that a second hub on the same directory is refused, not mixed in."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CommandError(
            f"another thinkube hub is running with the data directory {data_dir}: stop it, "
            "or give this one its own --data-dir"
        ) from None
    os.set_inheritable(fd, True)
    return fd


def hub_settings(
    ip: str,
    port: int,
    data_dir: Path,
    extra_config: Path | None = None,
    tls: tuple[str, str] | None = None,
    notices: list[str] | None = None,
) -> dict:
    """What hub_config.py reads: addresses (internal ones on free ports, so two hubs can run
    side by side), where things live, the person's own configuration file if any, and what
    the banner says."""
    return {
        "ip": ip,
        "port": port,
        "data_dir": str(data_dir),
        "hub_port": free_port(),
        "proxy_api_port": free_port(),
        "service_port": free_port(),
        "python": sys.executable,
        "extra_config": str(extra_config) if extra_config else None,
        "ssl_cert": tls[0] if tls else None,
        "ssl_key": tls[1] if tls else None,
        "hostname": socket.gethostname(),
        "server_accounts": os.geteuid() == 0,
        "hub_user": getpass.getuser(),
        "notices": notices or [],
    }


def run_hub(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be between 1 and 65535, not {args.port}")
    extra_config = args.config.expanduser().resolve() if args.config else None
    if extra_config and not extra_config.is_file():
        raise CommandError(f"--config {args.config}: no such file")
    tls = check_tls(args.ssl_cert, args.ssl_key)
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
    notices = []
    if os.geteuid() == 0:
        # Servers run as people's own accounts, which must be able to run this Python's
        # jupyterhub-singleuser (the default environment).
        singleuser = str(Path(sys.executable).parent / "jupyterhub-singleuser")
        closed = closed_to_others(singleuser)
        if closed:
            message = (
                f"servers run as people's own accounts, which cannot run {singleuser}: "
                f"{closed}. Put the checkout (or the Python environment) where other users "
                "can read it, e.g. under /opt or /srv"
            )
            if not extra_config:
                raise CommandError(message)
            notices.append(
                f"{PROG}: WARNING: {message} (unless --config gives other environments)."
            )
    if not _port_is_free(args.ip, args.port):
        raise CommandError(port_in_use_error(args.ip, args.port))
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
    except OSError as err:
        raise CommandError(f"cannot use {data_dir} as the data directory: {err.strerror}") from None
    hold_data_dir(data_dir)
    settings = hub_settings(args.ip, args.port, data_dir, extra_config, tls, notices)
    settings_file = data_dir / "settings.json"
    settings_file.write_text(json.dumps(settings, indent=2) + "\n")
    shared_password(data_dir)
    print(f"{PROG}: starting; the address and password follow once the hub answers.", flush=True)
    env = {**os.environ, SETTINGS_ENV: str(settings_file)}
    command = [sys.executable, "-m", "thinkube_spawner.hub_app", "-f", str(HUB_CONFIG)]
    # The hub takes over this process: Ctrl-C reaches it directly, and its clean-up stops
    # the proxy, the service and every server.
    os.chdir(data_dir)
    os.execve(sys.executable, command, env)
    return 0  # not reached
