"""JupyterHub configuration of `thinkube hub` (single-machine mode).

Loaded by `thinkube hub` as `jupyterhub -f <this file>`, with $THINKUBE_HUB_SETTINGS naming
the settings file it wrote (addresses, data directory). To customise, copy this file,
change it, and run `THINKUBE_HUB_SETTINGS=<data dir>/settings.json jupyterhub -f <copy>`;
docs/local.md shows PAM and OAuth logins.
"""

import importlib.util
import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

settings = json.loads(Path(os.environ["THINKUBE_HUB_SETTINGS"]).read_text())
data = Path(settings["data_dir"])
python = settings.get("python") or sys.executable
SERVICE = "thinkube-resources"

# --- where the hub listens and keeps its state --------------------------------------------
scheme = "https" if settings.get("ssl_cert") else "http"
c.JupyterHub.bind_url = f"{scheme}://{settings['ip']}:{settings['port']}/"
if settings.get("ssl_cert"):
    c.JupyterHub.ssl_cert = settings["ssl_cert"]
    c.JupyterHub.ssl_key = settings["ssl_key"]
hub_url = f"http://127.0.0.1:{settings['hub_port']}"
c.JupyterHub.hub_bind_url = hub_url
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings['proxy_api_port']}"
# The proxy opens the public port before the hub has started its service and added its
# own route; until then it would answer 404 for every page. With the hub as its default
# target, the login page works from the moment the hub listens.
c.ConfigurableHTTPProxy.command = ["configurable-http-proxy", "--default-target", hub_url]
c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data / "cookie_secret")
c.JupyterHub.cleanup_servers = True  # Ctrl-C stops every server
c.JupyterHub.cleanup_proxy = True

# --- who may log in: anyone with the shared password (see docs/local.md for PAM, OAuth) -----
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = (data / "password").read_text().strip()
c.Authenticator.allow_all = True

# --- servers: local processes placed by the thinkube form ---------------------------------
c.JupyterHub.spawner_class = "thinkube-local"
c.ThinkubeLocalSpawner.home_dir_template = str(data / "users" / "{username}")
# Which cores and GPUs each server and GPU job holds: the hub and the service share it.
claims = data / "claims"
c.ThinkubeLocalSpawner.claims_dir = str(claims)
c.ThinkubeLocalSpawner.environments = {
    "local": {"cmd": [str(Path(python).parent / "jupyterhub-singleuser")]}
}
c.ThinkubeLocalSpawner.start_timeout = 60
if importlib.util.find_spec("jupyterlab") is not None:
    c.ThinkubeLocalSpawner.default_url = "/lab"

# --- the availability service, managed by the hub -------------------------------------------


class QuietAllocationReads(logging.Filter):
    """The service reads the active servers every couple of seconds: keep those successful
    reads out of the hub's log (failures are still logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("200 GET /hub/api/users?state=") and f"({SERVICE}@" in message
        )


logging.getLogger("tornado.access").addFilter(QuietAllocationReads())
token_file = data / "service_token"
if not token_file.exists():
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
version = f"{sys.version_info.major}.{sys.version_info.minor}"
TRAINING_MODULES = ("thinkube_train", "torch", "transformers", "peft")


def can_train(python: str) -> bool:
    """Whether jobs run with `python` can run the trainer: it has the `train` extra's
    libraries (bitsandbytes aside: only quantized models need it)."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return all(importlib.util.find_spec(name) is not None for name in TRAINING_MODULES)
    check = f"import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, {TRAINING_MODULES!r})))"
    return subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0


seed = [
    {
        "name": "local",
        "display_name": f"This machine's Python {version}",
        "description": f"JupyterLab from {Path(python).parent.parent} (the Python that runs the hub).",
        "default": True,
        # The catalog wants an image reference; locally the entry names an environment
        # (c.ThinkubeLocalSpawner.environments), and this reference is only a label.
        "image": f"localhost/thinkube-local:python{version}",
        "tags": ["python", "local"],
        "kind": "jupyter",
        "metadata": {"training": can_train(python)},
    }
]
_proxy_host = settings["ip"] if settings["ip"] not in ("", "0.0.0.0", "::") else "127.0.0.1"
proxy_for_service = f"{scheme}://{_proxy_host}:{settings['port']}"
service_config = data / "service_config.py"
service_config.write_text(
    "c = get_config()  # noqa: F821\n"
    "c.ThinkubeService.inventory = 'local'\n"
    f"c.ThinkubeService.db_url = {('sqlite:///' + str(data / 'catalog.sqlite'))!r}\n"
    f"c.ThinkubeService.seed_images = {seed!r}\n"
    # idle GPUs given back: kernels are read through the hub's own proxy
    f"c.ThinkubeService.gpu_idle_proxy_url = {proxy_for_service!r}\n"
)
c.JupyterHub.services = [
    {
        "name": SERVICE,
        "url": f"http://127.0.0.1:{settings['service_port']}",
        "command": [python, "-m", "hub_service", "--config", str(service_config)],
        "cwd": str(data),
        "environment": {"THINKUBE_CLAIMS_DIR": str(claims)},
        "api_token": token_file.read_text().strip(),
        "display": True,
        "oauth_no_confirm": True,
    }
]
c.JupyterHub.custom_scopes = {
    "custom:thinkube:images:write": {
        "description": "Register, replace and delete images in the thinkube-resources image catalog."
    },
    "custom:thinkube:jobs:admin": {
        "description": "See and cancel everyone's GPU jobs in the thinkube-resources queue."
    },
}
c.JupyterHub.load_groups = {"jobs-admins": {"users": []}}
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", f"access:services!service={SERVICE}"]},
    # Members of the group jobs-admins (the hub's admin page adds them) see and cancel
    # everyone's GPU jobs.
    {"name": "jobs-admin", "scopes": ["custom:thinkube:jobs:admin"], "groups": ["jobs-admins"]},
    # The service reads which servers run and what they were given (their state, which only
    # the hub writes): the single-machine allocation; and starts the servers that waited for
    # a GPU (`servers`: JupyterHub 5.5 has no narrower scope that starts one). The same
    # scopes on JupyterHub 5.5 and 6.x.
    {
        "name": SERVICE,
        "scopes": [
            f"access:services!service={SERVICE}",
            "list:users",
            "read:servers",
            "admin:server_state",
            "servers",
            # idle GPUs given back (docs/culling.md): the owners' groups pick the policy,
            # and whether a kernel is busy is read from the server itself
            "read:users:groups",
            "access:servers",
        ],
        "services": [SERVICE],
    },
]

# --- the person's own configuration (thinkube hub --config FILE), applied last ----------------
if settings.get("extra_config"):
    load_subconfig(settings["extra_config"])  # noqa: F821 (provided by JupyterHub)

# The service runs GPU jobs as the spawner runs servers: the same accounts and isolation,
# as configured by now (the person's configuration included).
with service_config.open("a") as settings_for_jobs:
    for name in ("system_users", "account_prefix", "account_home_root", "gpu_isolation"):
        if name in c.ThinkubeLocalSpawner:
            value = c.ThinkubeLocalSpawner[name]
            settings_for_jobs.write(f"c.ThinkubeService.jobs_{name} = {value!r}\n")
