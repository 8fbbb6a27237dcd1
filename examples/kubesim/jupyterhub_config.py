"""A real JupyterHub with the thinkube-resources service, against kubesim.

`make dev` starts kubesim (20 nodes, 6 with GPUs, 300 pods) writing its kubeconfig, then runs
`jupyterhub -f examples/kubesim/jupyterhub_config.py`. By hand:

    python -m tests.kubesim --port 0 --nodes 20 --gpu-nodes 6 --pods 300 \
        --kubeconfig /tmp/thinkube-dev/kubeconfig &
    THINKUBE_DEV_DIR=/tmp/thinkube-dev jupyterhub -f examples/kubesim/jupyterhub_config.py

Then open http://127.0.0.1:8000/, log in with any name and password (the dummy
authenticator; `admin` is an admin and may register images), and open
http://127.0.0.1:8000/services/thinkube-resources/api/v1/cluster/summary, or with a token
(Token page of the hub):

    curl -H "Authorization: token $TOKEN" \
        http://127.0.0.1:8000/services/thinkube-resources/api/v1/cluster/resources

Environment: THINKUBE_DEV_DIR (default /tmp/thinkube-dev) holds the kubeconfig, the hub's
database and secrets, and the image catalog; THINKUBE_KUBECONFIG overrides the kubeconfig
path; THINKUBE_HUB_PORT (8000) and THINKUBE_SERVICE_PORT (8181) the ports.
This is a development setup: dummy authentication, everything on 127.0.0.1.
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

repo = Path(__file__).resolve().parents[2]
state = Path(os.environ.get("THINKUBE_DEV_DIR", "/tmp/thinkube-dev"))
state.mkdir(parents=True, exist_ok=True)
kubeconfig = os.environ.get("THINKUBE_KUBECONFIG", str(state / "kubeconfig"))
hub_port = int(os.environ.get("THINKUBE_HUB_PORT", "8000"))
service_port = int(os.environ.get("THINKUBE_SERVICE_PORT", "8181"))

c.JupyterHub.bind_url = f"http://127.0.0.1:{hub_port}/"
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
if os.geteuid() == 0:  # kubesim runs servers as this user; jupyter-server refuses root unless told
    c.ThinkubeSpawner.args = ["--allow-root"]
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
