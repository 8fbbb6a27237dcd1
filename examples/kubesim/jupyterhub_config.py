"""A real JupyterHub with the thinkube-resources service, against kubesim.

`make dev` runs examples/kubesim/dev.py, which starts kubesim (20 nodes, 6 with GPUs, 300
pods) writing its kubeconfig, then `jupyterhub -f examples/kubesim/jupyterhub_config.py`,
and prints the address once the hub answers. By hand:

    python -m tests.kubesim --port 0 --nodes 20 --gpu-nodes 6 --pods 300 --process-runtime \
        --kubeconfig .dev/kubeconfig &
    jupyterhub -f examples/kubesim/jupyterhub_config.py

Then open http://127.0.0.1:8000/, log in with any name and password (the dummy
authenticator; `admin` is an admin and may register images), and open
http://127.0.0.1:8000/services/thinkube-resources/api/v1/cluster/summary, or with a token
(Token page of the hub):

    curl -H "Authorization: token $TOKEN" \
        http://127.0.0.1:8000/services/thinkube-resources/api/v1/cluster/resources

Environment: THINKUBE_DEV_DIR (default: .dev/ in this checkout) holds the kubeconfig, the
hub's database and secrets, and the image catalog; THINKUBE_KUBECONFIG overrides the
kubeconfig path; THINKUBE_HUB_PORT (8000) is the hub's port; THINKUBE_HUB_API_PORT,
THINKUBE_PROXY_API_PORT and THINKUBE_SERVICE_PORT the internal ones (free ports when unset).
This is a development setup: dummy authentication, everything on 127.0.0.1.
"""

import os
import socket
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)


def port(variable: str, default: int | None = None) -> int:
    """The port in $variable; else `default`; else a free one."""
    if os.environ.get(variable):
        return int(os.environ[variable])
    if default:
        return default
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


repo = Path(__file__).resolve().parents[2]
state = Path(os.environ.get("THINKUBE_DEV_DIR") or repo / ".dev")
state.mkdir(parents=True, exist_ok=True)
kubeconfig = os.environ.get("THINKUBE_KUBECONFIG", str(state / "kubeconfig"))
hub_port = port("THINKUBE_HUB_PORT", 8000)
hub_api = f"http://127.0.0.1:{port('THINKUBE_HUB_API_PORT')}"
service_port = port("THINKUBE_SERVICE_PORT")

c.JupyterHub.bind_url = f"http://127.0.0.1:{hub_port}/"
c.JupyterHub.hub_bind_url = hub_api
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{port('THINKUBE_PROXY_API_PORT')}"
# The hub answers from the moment it listens, before its own route is added (no 404s).
c.ConfigurableHTTPProxy.command = ["configurable-http-proxy", "--default-target", hub_api]
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(state / "jupyterhub-proxy.pid")

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}
# --- ThinkubeSpawner against kubesim: pods run as real local jupyterhub-singleuser processes
c.JupyterHub.spawner_class = "thinkube"
try:
    import yaml

    with open(kubeconfig) as f:
        c.ThinkubeSpawner.k8s_api_host = yaml.safe_load(f)["clusters"][0]["cluster"]["server"]
except (OSError, KeyError, IndexError, TypeError):
    pass  # no kubesim yet: the service reports it, and the form offers nothing
c.ThinkubeSpawner.namespace = "default"
c.ThinkubeSpawner.cmd = [str(Path(sys.executable).parent / "jupyterhub-singleuser")]
# Servers never run as root: as Zero to JupyterHub does, pods run as uid 1000 (group 100),
# which kubesim applies when it runs as root (otherwise they run as its own user); uid 1000
# must then be able to read this checkout and its .venv.
c.ThinkubeSpawner.uid = 1000
c.ThinkubeSpawner.gid = 100
c.ThinkubeSpawner.shared_volumes = []  # kubesim has no storage to mount
c.ThinkubeSpawner.start_timeout = 60

# --- the availability service, managed by the hub (see docs/service.md) ---------------------
SERVICE = "thinkube-resources"
token_file = state / "service_token"
if not token_file.exists():
    import secrets

    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
service_token = token_file.read_text().strip()
c.JupyterHub.services = [
    {
        "name": SERVICE,
        "url": f"http://127.0.0.1:{service_port}",
        "command": [
            sys.executable,
            "-m",
            "hub_service",
            "--kubeconfig",
            kubeconfig,
            "--db-url",
            f"sqlite:///{state / 'thinkube_catalog.sqlite'}",
            "--log-level",
            "INFO",
        ],
        "cwd": str(repo),
        # ThinkubeSpawner reaches the service with this token (role below).
        "api_token": service_token,
        "display": True,  # listed in the hub's Services menu
        "oauth_no_confirm": True,  # a service of this hub: no "authorize" page
    }
]
c.JupyterHub.custom_scopes = {
    "custom:thinkube:images:write": {
        "description": "Register, replace and delete images in the thinkube-resources image catalog."
    }
}
c.JupyterHub.load_roles = [
    # every user may read availability and the catalog
    {"name": "user", "scopes": ["self", f"access:services!service={SERVICE}"]},
    # the service's own token, which the spawner uses to read availability
    {"name": SERVICE, "scopes": [f"access:services!service={SERVICE}"], "services": [SERVICE]},
    # image builders (CI, admins) may write the catalog
    {
        "name": "thinkube-image-writers",
        "scopes": [f"access:services!service={SERVICE}", "custom:thinkube:images:write"],
        "users": ["admin"],
    },
]
