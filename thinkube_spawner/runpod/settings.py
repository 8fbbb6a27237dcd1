"""Cloud GPU settings, shared by every spawner that can start a RunPod server.

`RunPodCloudSettings` is a Configurable mixin: a spawner inherits it (before `Spawner` in its
bases) and gets the traits, configurable under its own name (`c.RemoteRunPodSpawner.x`) or
under the shared section (`c.RunPodCloudSettings.x`, which every such spawner reads).
`cloud_config()` freezes them into a `CloudConfig` for the backend. The rest of this module
is pure functions: a user's price cap, pod names, the container command and environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from traitlets import Dict, Float, Integer, Unicode, validate
from traitlets.config import Configurable

from thinkube_core.runpod.credentials import Secret, resolve_api_key, resolve_api_url
from thinkube_core.runpod.errors import ConfigurationError
from thinkube_core.runpod.models import DEFAULT_PROXY_URL_TEMPLATE
from thinkube_core.runpod.offers import cloud_enabled, price_cap_for

DEFAULT_CLOUD_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
JUPYTER_PORT = 8888
# The reaper in the hub service looks for pods named with this prefix.
DEFAULT_NAME_PREFIX = "thinkube"
MAX_POD_NAME = 59  # RunPod pod names stay under 60 characters
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
_NAME_UNSAFE = re.compile(r"[^a-z0-9_.-]+")
# Env entries of the hub's own process that mean nothing in a cloud container.
HOST_ONLY_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_ROOT", "CONDA_DEFAULT_ENV")


@dataclass(frozen=True)
class CloudConfig:
    """What the backend needs to run servers on RunPod (see RunPodCloudSettings)."""

    api_key: Secret | None  # None: no key found (cloud not usable)
    api_url: str
    proxy_url_template: str = DEFAULT_PROXY_URL_TEMPLATE
    name_prefix: str = DEFAULT_NAME_PREFIX
    offer_attempts: int = 3
    max_lifetime_hours: float = 12.0
    image: str = DEFAULT_CLOUD_IMAGE
    extra_meta: Mapping[str, str] = field(default_factory=dict)
    public_hub_url: str = ""  # https://hub.example.org/ (with the hub's base_url); "": unset
    start_timeout_s: float = 900.0
    poll_interval_s: float = 5.0
    container_disk_gb: int = 40
    jupyterhub_version: str = ""  # installed in the container if it lacks jupyterhub
    key_problem: str = ""  # why there is no key, when there is none


# -- pure functions ------------------------------------------------------------------


def pod_name(prefix: str, user: str, server: str = "") -> str:
    """`{prefix}-{user}-{server}` (`{prefix}-{user}` for the default server), lower case,
    under 60 characters: a long name is cut and ends in a hash of the whole, so that two
    servers never share a name."""
    parts = [prefix, user] + ([server] if server else [])
    name = "-".join(_NAME_UNSAFE.sub("-", p.lower()).strip("-") or "x" for p in parts)
    if len(name) <= MAX_POD_NAME:
        return name
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]
    return f"{name[: MAX_POD_NAME - 9].rstrip('-')}-{digest}"


def check_name_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"the pod name prefix {prefix!r} must be 1-24 lower-case letters, digits or '-'"
        )
    return prefix


def singleuser_docker_args(
    jupyterhub_version: str = "", port: int = JUPYTER_PORT, allow_origin: str = ""
) -> str:
    """The container's start command: jupyterhub-singleuser on `port` (all interfaces, as
    root: RunPod containers run as root), installing jupyterhub first (the hub's version)
    when the image lacks it. `allow_origin` (the hub's public origin) lets browsers on the
    hub's pages call the server when the proxy in front of it (RunPod's) is addressed by
    another host name than the hub's."""
    package = f"jupyterhub=={jupyterhub_version}" if jupyterhub_version else "jupyterhub"
    install = (
        "command -v jupyterhub-singleuser >/dev/null 2>&1 || "
        f"python3 -m pip install --no-cache-dir {shlex.quote(package)} jupyter_server"
    )
    run = f"exec jupyterhub-singleuser --ip=0.0.0.0 --port={port} --allow-root"
    if allow_origin:
        run += f" --ServerApp.allow_origin={shlex.quote(allow_origin)}"
    return f"bash -c {shlex.quote(f'{install}; {run}')}"


def origin_of(url: str) -> str:
    """`https://hub.example.org/jupyter/` -> `https://hub.example.org`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def normalise_public_url(url: str) -> str:
    """`hub.example.org/x` -> `https://hub.example.org/x/`; ConfigurationError if not a URL."""
    url = url.strip()
    if not url:
        return ""
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"the public hub URL {url!r} is not an http(s) URL")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def public_hub_url(configured: str, jupyterhub_public_hub_url: str = "") -> str:
    """The hub's public URL (with its base_url, e.g. `https://hub.example.org/`): the
    configured one, else the one JupyterHub derives from `c.JupyterHub.public_url` (its
    `/hub/` URL), else ""."""
    if configured.strip():
        return normalise_public_url(configured)
    if jupyterhub_public_hub_url:
        parts = urlsplit(jupyterhub_public_hub_url)
        path = parts.path
        if path.rstrip("/").endswith("/hub"):
            path = path.rstrip("/")[: -len("hub")]
        return normalise_public_url(urlunsplit((parts.scheme, parts.netloc, path, "", "")))
    return ""


def missing_public_url_message(settings_class: str) -> str:
    return (
        "Cloud GPUs need the hub to be reachable from the cloud: set c.JupyterHub.public_url "
        f"(or c.{settings_class}.cloud_public_hub_url) to the hub's public https URL, "
        "e.g. 'https://hub.example.org/'."
    )


def pod_env(
    spawner_env: Mapping[str, str],
    *,
    public_hub_url: str,
    server_base_url: str,
    port: int = JUPYTER_PORT,
) -> dict[str, str]:
    """The spawner's environment made to work in a cloud container: the hub's API and
    activity URLs point at the public URL (the pod reaches the hub only through it), the
    server binds to all interfaces on `port`, and the hub's own PATH and the like are
    left out."""
    env = {k: v for k, v in spawner_env.items() if k not in HOST_ONLY_ENV}
    public = urlsplit(public_hub_url)
    for key in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
        if env.get(key):
            parts = urlsplit(env[key])
            env[key] = urlunsplit((public.scheme, public.netloc, parts.path, parts.query, ""))
    env["JUPYTERHUB_SERVICE_URL"] = f"http://0.0.0.0:{port}{server_base_url}"
    return env


# -- the Configurable mixin ----------------------------------------------------------


class RunPodCloudSettings(Configurable):
    """Cloud GPU (RunPod) settings. Mix into a Spawner (listed before Spawner)."""

    runpod_api_key = Unicode(
        "",
        config=True,
        help="RunPod API key. Prefer $RUNPOD_API_KEY or `runpod_api_key_file` (a key here "
        "ends up in the config file). E.g. `os.environ['RUNPOD_API_KEY']`.",
    )
    runpod_api_key_file = Unicode(
        "",
        config=True,
        help="File holding the RunPod API key (a mounted Secret), e.g. "
        "`/etc/thinkube/runpod-api-key`. Default: $RUNPOD_API_KEY, then $RUNPOD_API_KEY_FILE.",
    )
    runpod_api_url = Unicode(
        "",
        config=True,
        help="RunPod GraphQL endpoint, e.g. `https://api.runpod.io/graphql` (the default; "
        "$RUNPOD_API_URL overrides it).",
    )
    runpod_proxy_url_template = Unicode(
        "",
        config=True,
        help="URL of a pod's HTTP port; `{pod_id}`, `{port}` (and `{ip}`, `{public_port}` of "
        "the runtime port mapping) are filled in, e.g. "
        "`https://{pod_id}-{port}.proxy.runpod.net` (the default; "
        "$RUNPOD_PROXY_URL_TEMPLATE overrides it).",
    )
    cloud_pod_name_prefix = Unicode(
        DEFAULT_NAME_PREFIX,
        config=True,
        help="Pods are named `{prefix}-{user}-{server}`; one prefix per hub. It must match "
        "the hub service's reaper prefix, which ends pods of this prefix that no server "
        "owns. E.g. `'lab1'`.",
    )

    @validate("cloud_pod_name_prefix")
    def _check_prefix(self, proposal):
        try:
            return check_name_prefix(proposal.value)
        except ConfigurationError as err:
            raise ValueError(str(err)) from None

    cloud_offer_attempts = Integer(
        3,
        config=True,
        help="How many offers (cheapest first) to try when RunPod has no capacity, e.g. `3`.",
    )
    cloud_max_lifetime_hours = Float(
        12.0,
        config=True,
        help="RunPod ends a cloud server after this many hours even if the hub is gone "
        "(`terminateAfter`, a dead-man switch), e.g. `12`.",
    )
    cloud_image = Unicode(
        DEFAULT_CLOUD_IMAGE,
        config=True,
        help="Image for cloud servers, e.g. "
        f"`'{DEFAULT_CLOUD_IMAGE}'`. jupyterhub is installed at start if it lacks it.",
    )
    cloud_extra_meta = Dict(
        {},
        config=True,
        help="Extra metadata on every cloud pod, as `THINKUBE_<KEY>` env entries (shown by "
        "`thinkube cloud ls`; never a secret), e.g. `{'team': 'vision', 'cost-center': '42'}`.",
    )
    cloud_price_cap = Float(
        0.0,
        config=True,
        help="Most a user may spend per hour on a cloud server, in USD, e.g. `1.5`. 0 (the "
        "default) means no cloud GPUs, unless a user or group cap allows them.",
    )
    cloud_user_price_caps = Dict(
        {},
        config=True,
        help="Per-user caps (USD/h) that replace every other cap, e.g. `{'alice': 3.0, "
        "'intern': 0}`.",
    )
    cloud_group_price_caps = Dict(
        {},
        config=True,
        help="Per-group caps (USD/h); a user in several groups gets the highest, e.g. "
        "`{'gpu-power-users': 4.0}`.",
    )
    cloud_public_hub_url = Unicode(
        "",
        config=True,
        help="The hub's public URL, which cloud servers call back (they cannot reach the "
        "hub's internal address), e.g. `https://hub.example.org/`. Default: "
        "c.JupyterHub.public_url. Required when cloud GPUs are enabled.",
    )
    cloud_start_timeout = Float(
        900.0,
        config=True,
        help="Seconds a cloud server may take from renting to Jupyter answering, e.g. "
        "`900`; after that the pod is terminated and the start fails.",
    )
    cloud_poll_interval = Float(
        5.0, config=True, help="Seconds between RunPod status checks while starting, e.g. `5`."
    )
    cloud_container_disk_gb = Integer(
        40, config=True, help="Container disk of a cloud server in GB, e.g. `40`."
    )

    # -- derived -------------------------------------------------------------------

    def cloud_price_cap_for(self, user: str, groups: Iterable[str]) -> float:
        return price_cap_for(
            user,
            groups,
            self.cloud_price_cap,
            self.cloud_user_price_caps,
            self.cloud_group_price_caps,
        )

    def user_price_cap(self) -> float:
        """The cap of the spawner's user, from their name and hub groups (a spawner's)."""
        groups = [g.name for g in getattr(self.user, "groups", None) or []]
        return self.cloud_price_cap_for(self.user.name, groups)

    @property
    def cloud_enabled(self) -> bool:
        return cloud_enabled(
            self.cloud_price_cap, self.cloud_user_price_caps, self.cloud_group_price_caps
        )

    def cloud_public_url(self, jupyterhub_public_hub_url: str = "") -> str:
        return public_hub_url(self.cloud_public_hub_url, jupyterhub_public_hub_url)

    def cloud_problems(self, jupyterhub_public_hub_url: str = "") -> list[str]:
        """What keeps cloud GPUs from working with these settings, for the admin's log
        (no secrets in it); [] when nothing does or when cloud GPUs are off."""
        if not self.cloud_enabled:
            return []
        problems = []
        if not self.cloud_public_url(jupyterhub_public_hub_url):
            problems.append(missing_public_url_message(type(self).__name__))
        try:
            resolve_api_url(self.runpod_api_url or None)
            config = self.cloud_config(jupyterhub_public_hub_url)
        except ConfigurationError as err:
            problems.append(f"Cloud GPUs cannot work: {err}.")
        else:
            if config.api_key is None:
                problems.append(f"Cloud GPUs cannot work: {config.key_problem}.")
        return problems

    def cloud_config(self, jupyterhub_public_hub_url: str = "") -> CloudConfig:
        """The settings, frozen, with the key resolved (never raises for a missing key:
        `api_key` is then None and `key_problem` says why)."""
        key: Secret | None = None
        problem = ""
        try:
            key = resolve_api_key(
                self.runpod_api_key or None,
                key_file=self.runpod_api_key_file or None,
                runpod_config=None,
            )
        except ConfigurationError as err:
            problem = str(err)
        from jupyterhub import __version__ as jupyterhub_version

        return CloudConfig(
            api_key=key,
            key_problem=problem,
            api_url=resolve_api_url(self.runpod_api_url or None),
            proxy_url_template=self.runpod_proxy_url_template
            or os.environ.get("RUNPOD_PROXY_URL_TEMPLATE", "")
            or DEFAULT_PROXY_URL_TEMPLATE,
            name_prefix=self.cloud_pod_name_prefix,
            offer_attempts=max(1, self.cloud_offer_attempts),
            max_lifetime_hours=self.cloud_max_lifetime_hours,
            image=self.cloud_image,
            extra_meta={str(k): str(v) for k, v in self.cloud_extra_meta.items()},
            public_hub_url=self.cloud_public_url(jupyterhub_public_hub_url),
            start_timeout_s=self.cloud_start_timeout,
            poll_interval_s=self.cloud_poll_interval,
            container_disk_gb=self.cloud_container_disk_gb,
            jupyterhub_version=jupyterhub_version,
        )


__all__ = [
    "DEFAULT_CLOUD_IMAGE",
    "DEFAULT_NAME_PREFIX",
    "JUPYTER_PORT",
    "CloudConfig",
    "RunPodCloudSettings",
    "check_name_prefix",
    "cloud_enabled",
    "missing_public_url_message",
    "normalise_public_url",
    "origin_of",
    "pod_env",
    "pod_name",
    "price_cap_for",
    "public_hub_url",
    "singleuser_docker_args",
]
