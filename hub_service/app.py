"""thinkube-resources: the availability service, managed by JupyterHub.

Run by the hub as a managed service (`python -m hub_service`); it reads the JUPYTERHUB_*
environment the hub gives it. Every option is a traitlet, settable in a config file
(`--config thinkube_service_config.py`) or on the command line
(`--ThinkubeService.debounce_seconds=0.05`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Enum, Float, Instance, Integer, List, Unicode, default
from traitlets.config import Application

from .apidocs import docs_routes
from .availability import AvailabilityAnswers
from .background import DaemonThreadPool, cancel_and_wait
from .catalog import DEFAULT_IMAGES, Catalog, CatalogError
from .cloud import Cloud
from .gpu_culler import GpuIdleCuller, HubServerControl
from .gpu_idle import IdlePolicy, PolicyError, policy_from_settings
from .gpu_idle_handlers import gpu_idle_routes
from .handlers import OPENAPI_PATH, NotFoundHandler, ReadyHandler, routes
from .heap import keep_frozen
from .inventory import Inventory
from .jobs.handlers import job_routes
from .jobs.manager import JobQueue
from .jobs.placement import DEFAULT_IMAGE as DEFAULT_RUNPOD_JOB_IMAGE
from .jobs.setup import make_job_queue
from .jobs.spec import JobLimits
from .jobs.uploads import upload_routes
from .jobs.waiting import WaitingLimits
from .jobs.waiting_handlers import waiting_routes
from .lifecycle import HubWatch
from .local import LocalInventory
from .page import page_route

# How often the image catalog is read again for the availability answer, which otherwise
# keeps its last read until this service writes the catalog. Not per request: a read in the
# database thread slows the event loop (the two contend for the GIL) by far more than it
# costs, and a spawn form asks on every render.
IMAGES_REFRESH_SECONDS = 10.0


class ThinkubeService(Application):
    name = "thinkube-resources"
    description = (
        "Live GPU and node availability, the image catalog and cloud offers, for JupyterHub."
    )
    examples = """
    python -m hub_service --ThinkubeService.kubeconfig=~/.kube/config
    python -m hub_service --config /etc/thinkube/service_config.py
    """

    aliases = {
        "config": "ThinkubeService.config_file",
        "port": "ThinkubeService.port",
        "ip": "ThinkubeService.ip",
        "inventory": "ThinkubeService.inventory",
        "kubeconfig": "ThinkubeService.kubeconfig",
        "db-url": "ThinkubeService.db_url",
        "log-level": "Application.log_level",
        "log-file": "ThinkubeService.log_file",
    }

    @default("log_format")
    def _default_log_format(self) -> str:
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    @default("log_datefmt")
    def _default_log_datefmt(self) -> str:
        return "%Y-%m-%d %H:%M:%S"

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    config_file = Unicode(
        "",
        config=True,
        help="A Python config file to load, e.g. `/etc/thinkube/service_config.py`.",
    )
    service_name = Unicode(
        config=True,
        help="The service's name in the hub (from JUPYTERHUB_SERVICE_NAME), e.g. `thinkube-resources`.",
    )

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "thinkube-resources")

    service_url = Unicode(
        config=True,
        help="Where the hub's proxy reaches this service (from JUPYTERHUB_SERVICE_URL), e.g. `http://hub:8181`.",
    )

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8181")

    service_prefix = Unicode(
        config=True,
        help="URL prefix of every route (from JUPYTERHUB_SERVICE_PREFIX), e.g. `/services/thinkube-resources/`.",
    )

    @default("service_prefix")
    def _default_service_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{self.service_name}/")

    ip = Unicode(
        config=True,
        help="Address to listen on. Default: the host of service_url when it is an IP address or "
        "localhost, else all interfaces (as in z2jh, where service_url is `http://hub:8181`). E.g. `0.0.0.0`.",
    )

    @default("ip")
    def _default_ip(self) -> str:
        host = urlparse(self.service_url).hostname or ""
        if host == "localhost":
            return "127.0.0.1"
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            return "0.0.0.0"

    port = Integer(
        config=True, help="Port to listen on. Default: the port of service_url, e.g. `8181`."
    )

    @default("port")
    def _default_port(self) -> int:
        return urlparse(self.service_url).port or 8181

    inventory = Unicode(
        "kubernetes",
        config=True,
        help="Where availability comes from: `kubernetes` (watch Nodes and Pods cluster-wide) "
        "or `local` (this machine as the one node: psutil, NVML and the hub's active servers; "
        "see docs/local.md). E.g. `local`.",
    )
    local_refresh_seconds = Float(
        2.0,
        config=True,
        help="With `inventory = 'local'`: seconds between re-reading this machine (CPU, memory, "
        "GPUs through NVML) and the hub's active servers, e.g. `2`.",
    )
    kubeconfig = Unicode(
        "",
        config=True,
        help="kubeconfig file for the Kubernetes inventory; empty: in-cluster config (the hub's "
        "ServiceAccount), else ~/.kube/config. E.g. `/home/me/.kube/config`.",
    )
    debounce_seconds = Float(
        0.1,
        config=True,
        help="Wait this long after a change before publishing new documents, so a burst of "
        "events is serialised once. E.g. `0.1`.",
    )
    list_page_size = Integer(500, config=True, help="Objects per page when listing, e.g. `500`.")
    watch_timeout_seconds = Integer(
        300,
        config=True,
        help="Ask the API server to end each watch after this long (it is then resumed), e.g. `300`.",
    )
    max_backoff_seconds = Float(
        10.0,
        config=True,
        help="Longest wait between attempts to reach the Kubernetes API after a failure (the "
        "wait doubles from 0.5 s up to this). E.g. `10`.",
    )
    log_file = Unicode(
        "",
        config=True,
        help="Also append the log to this file; empty: stderr only (the hub's log). "
        "E.g. `/var/log/thinkube-resources.log`.",
    )
    dcgm_endpoints = List(
        Unicode(),
        config=True,
        help="DCGM exporter metrics URLs to scrape for live GPU utilisation and memory; off when "
        "empty. E.g. `['http://nvidia-dcgm-exporter.gpu-operator:9400/metrics']`.",
    )
    dcgm_interval_seconds = Float(
        15.0, config=True, help="Seconds between DCGM scrapes, e.g. `15`."
    )
    db_url = Unicode(
        "sqlite:///thinkube_catalog.sqlite",
        config=True,
        help="SQLAlchemy URL of the image catalog, e.g. `sqlite:///thinkube_catalog.sqlite` or "
        "`postgresql+psycopg://user:pass@db/thinkube`.",
    )
    seed_images = List(
        Dict(),
        config=True,
        help="Catalog entries stored on first start (when the catalog is empty), e.g. "
        "`[{'name': 'scipy', 'image': 'quay.io/jupyter/scipy-notebook:2025-01-06', 'default': True}]`.",
    )

    @default("seed_images")
    def _default_seed_images(self) -> list[dict]:
        return list(DEFAULT_IMAGES)

    images_write_scope = Unicode(
        "custom:thinkube:images:write",
        config=True,
        help="Hub scope needed to register or delete images (declare it in "
        "`c.JupyterHub.custom_scopes`), e.g. `custom:thinkube:images:write`.",
    )
    extra_access_scopes = List(
        Unicode(),
        config=True,
        help="Hub scopes that also grant read access, beyond access to this service, e.g. `['admin:users']`.",
    )
    runpod_api_key = Unicode(
        "",
        config=True,
        help="RunPod API key for cloud GPU offers and the reaper; empty: runpod_api_key_file, "
        "else RUNPOD_API_KEY, else the file named by RUNPOD_API_KEY_FILE; none: cloud is off. "
        "Never logged. E.g. `c.ThinkubeService.runpod_api_key = open('/secrets/runpod').read()`.",
    )
    runpod_api_key_file = Unicode(
        "",
        config=True,
        help="A file holding the RunPod API key (see runpod_api_key), e.g. "
        "`/etc/thinkube/runpod-api-key`.",
    )
    runpod_api_url = Unicode(
        "",
        config=True,
        help="RunPod's GraphQL endpoint; empty: RUNPOD_API_URL, else "
        "`https://api.runpod.io/graphql`. E.g. `https://api.runpod.io/graphql`.",
    )
    runpod_rest_url = Unicode(
        "",
        config=True,
        help="RunPod's REST API v2 (pod logs, for jobs on RunPod); empty: RUNPOD_REST_URL, else "
        "`https://api.runpod.io/v2`. E.g. `https://api.runpod.io/v2`.",
    )
    cloud_price_cap = Float(
        0.0,
        config=True,
        help="The most a person may spend per hour (USD) on a job's RunPod pod, unless a user "
        "or group cap says otherwise; 0: no cloud jobs. The same setting as the spawners' "
        "(`RunPodCloudSettings.cloud_price_cap`): give both the same values. E.g. `1.0`.",
    )
    cloud_user_price_caps = Dict(
        value_trait=Float(),
        config=True,
        help="Per-user caps (USD/h), over the group caps and cloud_price_cap, as the "
        "spawners' setting of that name, e.g. `{'alice': 2.5}`.",
    )
    cloud_group_price_caps = Dict(
        value_trait=Float(),
        config=True,
        help="Per-group caps (USD/h); a person in several groups gets the highest, as the "
        "spawners' setting of that name, e.g. `{'gpu-users': 1.5}`.",
    )
    cloud_offers_ttl_seconds = Float(
        300.0,
        config=True,
        help="Seconds between background refreshes of RunPod's offers (requests never wait "
        "on RunPod), e.g. `300`.",
    )
    cloud_pod_prefix = Unicode(
        "thinkube",
        config=True,
        help="This hub's mark on its cloud pods (their THINKUBE_HUB metadata); the reaper ends "
        "only pods with this mark. Must match the spawner's cloud_pod_name_prefix. E.g. `lab-hub`.",
    )
    cloud_reaper_interval_seconds = Float(
        300.0,
        config=True,
        help="Seconds between reaper passes, which terminate cloud pods of this hub that no "
        "active server owns (needs the hub scopes list:users, read:servers and "
        "admin:server_state); 0: off. E.g. `300`.",
    )
    cloud_reaper_grace_seconds = Float(
        600.0,
        config=True,
        help="The reaper leaves pods younger than this alone, e.g. `600`.",
    )

    jobs_enabled = Bool(
        True,
        config=True,
        help="Serve the GPU job queue (`api/v1/jobs`, `api/v1/queue`, `api/v1/nodes` and the "
        "routes of the older job server, `api/submit` and the rest): scripts queued, run on "
        "free GPUs as Kubernetes Jobs or, with `inventory = 'local'`, as processes on this "
        "machine. E.g. `False`.",
    )
    jobs_admin_scope = Unicode(
        "custom:thinkube:jobs:admin",
        config=True,
        help="Hub scope that lets a token see and cancel everyone's jobs (declare it in "
        "`c.JupyterHub.custom_scopes`; without it a person sees only their own). E.g. "
        "`custom:thinkube:jobs:admin`.",
    )
    jobs_max_script_bytes = Integer(
        1 << 20,
        config=True,
        help="Largest script a job may submit, in bytes, e.g. `1048576`.",
    )
    jobs_max_expected_seconds = Float(
        7 * 86400.0,
        config=True,
        help="Longest expected_time a job may ask for, in seconds, e.g. `86400`.",
    )
    jobs_deadline_factor = Float(
        2.0,
        config=True,
        help="A running job is ended (reason DeadlineExceeded) at this many times its "
        "expected_time, e.g. `2`.",
    )
    jobs_max_deadline_seconds = Float(
        14 * 86400.0,
        config=True,
        help="No job runs longer than this, whatever its expected_time, in seconds, e.g. `172800`.",
    )
    jobs_result_max_bytes = Integer(
        1 << 20,
        config=True,
        help="The most of each output stream a result answers with (the end of it is kept), "
        "in bytes, e.g. `1048576`.",
    )
    jobs_folder = Unicode(
        "thinkube-jobs",
        config=True,
        help="With `inventory = 'local'`: the folder that holds each job's script and output "
        "(relative to the service's working folder), e.g. `/var/lib/thinkube/jobs`.",
    )
    jobs_system_users = Bool(
        False,
        config=True,
        help="With `inventory = 'local'` and the service running as root: run a person's jobs "
        "as the existing system user of their name (as ThinkubeLocalSpawner.system_users "
        "does for servers; give both the same value). E.g. `True`.",
    )
    jobs_account_prefix = Unicode(
        "jupyter-",
        config=True,
        help="With `inventory = 'local'` and the service running as root: a person's jobs run "
        "as the account <prefix><name>, the one their servers run as (give "
        "ThinkubeLocalSpawner.account_prefix the same value). E.g. `jupyter-`.",
    )
    jobs_account_home_root = Unicode(
        "/home",
        config=True,
        help="Where accounts made for people get their homes (as "
        "ThinkubeLocalSpawner.account_home_root), e.g. `/home`.",
    )
    jobs_gpu_isolation = Enum(
        ["auto", "required", "off"],
        "auto",
        config=True,
        help="With `inventory = 'local'`: hide the GPUs a job was not given, as "
        "ThinkubeLocalSpawner.gpu_isolation does for servers: `auto`, `required` or `off`. "
        "E.g. `required`.",
    )
    jobs_namespace = Unicode(
        "",
        config=True,
        help="With `inventory = 'kubernetes'`: the namespace of the jobs' Kubernetes Jobs; "
        "empty: the namespace this service runs in, else `default`. E.g. `gpu-jobs`.",
    )
    jobs_kueue_queue = Unicode(
        "",
        config=True,
        help="With `inventory = 'kubernetes'`: a Kueue LocalQueue in jobs_namespace; Jobs are "
        "then created suspended with its `kueue.x-k8s.io/queue-name` label, Kueue admits "
        "them, and queue positions are Kueue's. Empty: this service's own queue. E.g. `gpu`.",
    )
    jobs_python = Unicode(
        "python",
        config=True,
        help="With `inventory = 'kubernetes'`: the command in the job's image that runs its "
        "script, e.g. `python3`.",
    )
    jobs_ttl_seconds = Integer(
        3600,
        config=True,
        help="With `inventory = 'kubernetes'`: a finished Job and its pod are deleted this "
        "long after it ends (the result is kept in the service's database), e.g. `3600`.",
    )
    jobs_models_claim = Unicode(
        "",
        config=True,
        help="With `inventory = 'kubernetes'`: a PersistentVolumeClaim in jobs_namespace that "
        "every job's pod mounts at /models; a job writes its artifacts to "
        "/models/jobs/<user>/<id>/ there ($THINKUBE_ARTIFACTS_DIR). Empty: a job's artifacts "
        "go to a scratch folder, gone with its pod. E.g. `thinkube-models`.",
    )
    jobs_artifacts_root = Unicode(
        "",
        config=True,
        help="With `inventory = 'kubernetes'`: where this service sees the root of "
        "jobs_models_claim (its pod mounts the claim there, read-only), to list and serve "
        "job artifacts; empty: the API says artifacts are not served. E.g. "
        "`/models` (where job pods see it too).",
    )

    jobs_datasets_claim = Unicode(
        "",
        config=True,
        help="With `inventory = 'kubernetes'`: a PersistentVolumeClaim in jobs_namespace that "
        "every job's pod mounts read-only at /datasets (training jobs' `dataset.path`); the "
        "service sees it at training_datasets_path. Empty: none. E.g. `thinkube-datasets`.",
    )

    training_models_path = Unicode(
        "/models",
        config=True,
        help="The shared models volume: a training job's base_model given as an absolute path "
        "must lie in it and exist here (the service sees the volume, read-only, where its "
        "jobs see it). E.g. `/models`.",
    )
    training_datasets_path = Unicode(
        "/datasets",
        config=True,
        help="The shared datasets volume: a training job's dataset.path must lie in it and "
        "exist here (as training_models_path). E.g. `/datasets`.",
    )
    training_models = Dict(
        Unicode(),
        config=True,
        help="The admin's catalog of models training jobs may use: name -> Hugging Face id or "
        "absolute path; a job's base_model must then be one of its names (or values). Empty: "
        "any Hugging Face id or path in training_models_path. E.g. "
        "`{'qwen-0.5b': 'Qwen/Qwen2.5-0.5B', 'llama-8b': '/models/llama-3.1-8b'}`.",
    )
    training_max_dataset_bytes = Integer(
        16 << 20,
        config=True,
        help="Largest dataset file a training job may send with it, in bytes; it travels "
        "compressed in the job's script, which jobs_max_script_bytes bounds too. Larger "
        "datasets go on the shared datasets volume. E.g. `16777216`.",
    )

    jobs_public_url = Unicode(
        config=True,
        help="This service's address as a RunPod pod reaches it (jobs on RunPod send their "
        "artifacts and result there); empty: none, and no jobs on RunPod. Default: the "
        "hub's JUPYTERHUB_PUBLIC_URL for this service, which the hub sets when "
        "`c.JupyterHub.public_url` is set. E.g. "
        "`https://hub.example.org/services/thinkube-resources/`.",
    )

    @default("jobs_public_url")
    def _default_jobs_public_url(self) -> str:
        return os.environ.get("JUPYTERHUB_PUBLIC_URL", "")

    jobs_runpod_image = Unicode(
        DEFAULT_RUNPOD_JOB_IMAGE,
        config=True,
        help="The image a job on RunPod runs in when it names no catalog image (it needs "
        "Python 3.8 or later), e.g. `runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04`.",
    )
    jobs_runpod_python = Unicode(
        "python3",
        config=True,
        help="The command in a RunPod job's image that runs Python, e.g. `python`.",
    )
    jobs_runpod_artifacts_folder = Unicode(
        "thinkube-job-artifacts",
        config=True,
        help="Where what jobs on RunPod upload is kept, one folder per job (relative to the "
        "service's working folder), e.g. `/var/lib/thinkube/job-artifacts`.",
    )
    jobs_runpod_max_artifact_bytes = Integer(
        20 << 30,
        config=True,
        help="The most all of one RunPod job's artifacts may take, in bytes, e.g. `10737418240`.",
    )
    jobs_runpod_result_grace_seconds = Float(
        600.0,
        config=True,
        help="How long after its deadline a job on RunPod may still upload its artifacts and "
        "result; with nothing by then it ends Lost and its pod is terminated. E.g. `600`.",
    )
    jobs_runpod_status_interval_seconds = Float(
        15.0,
        config=True,
        help="How often the pod of a running RunPod job is looked at (a pod that vanished or "
        "stopped without reporting ends its job Lost), e.g. `15`.",
    )

    # -- waiting for a GPU (notebook servers in the GPU queue) ---------------------------

    waiting_max_seconds = Float(
        8 * 3600.0,
        config=True,
        help="How long a notebook server request may wait for its GPU before it leaves the "
        "queue with a message (it is not started then), e.g. `28800` (8 h).",
    )
    server_max_age_seconds = Float(
        0.0,
        config=True,
        help="The longest a notebook server runs on this hub, when something ends them "
        "(jupyterhub-idle-culler's --max-age, say): the basis of the estimate of when the "
        "GPUs of running servers free, shown to people who wait. 0: servers run until "
        "stopped, and give no estimate. E.g. `28800`.",
    )
    waiting_max_per_user = Integer(
        2,
        config=True,
        help="Notebook server requests one person may have waiting at once (one per server "
        "name in any case); 0: nobody may wait. E.g. `2`.",
    )
    waiting_max_per_group = Dict(
        Integer(),
        config=True,
        help="The same per hub group, for each of its members (a person in several groups "
        "gets the largest), e.g. `{'students': 1, 'staff': 3}`.",
    )
    gpus_max_per_user = Integer(
        0,
        config=True,
        help="GPUs of this hub one person may hold at once, notebook servers and jobs "
        "together, checked when a waiting server request joins the queue and when a GPU job is "
        "submitted (what they hold, what they already wait for, and what it asks for; a job "
        "rented on RunPod counts for nothing); 0: no cap. E.g. `4`.",
    )
    gpus_max_per_group = Dict(
        Integer(),
        config=True,
        help="The same per hub group, for each of its members (the largest of their groups; "
        "0 there: no cap), e.g. `{'students': 1, 'staff': 8}`.",
    )

    # -- idle GPUs given back (notebook servers only; jobs have their deadline) ------------

    gpu_idle_enabled = Bool(
        False,
        config=True,
        help="Stop notebook servers that hold GPUs they do not use, for everyone without a "
        "gpu_idle_groups entry: a server whose GPUs all stayed below "
        "gpu_idle_threshold_percent for gpu_idle_seconds, with no busy kernel, is warned, "
        "then stopped after gpu_idle_grace_seconds unless its owner keeps it (docs/culling.md). "
        "E.g. `True`.",
    )
    gpu_idle_threshold_percent = Float(
        5.0,
        config=True,
        help="A GPU below this utilisation (percent) counts as idle, e.g. `5`.",
    )
    gpu_idle_seconds = Float(
        2 * 3600.0,
        config=True,
        help="How long a server's GPUs must stay idle, without a gap in the metrics, before "
        "it is warned, in seconds, e.g. `7200` (2 h).",
    )
    gpu_idle_grace_seconds = Float(
        30 * 60.0,
        config=True,
        help="How long after the warning an idle server is stopped, unless its owner keeps "
        "it or a GPU gets busy, in seconds, e.g. `1800` (30 min).",
    )
    gpu_idle_groups = Dict(
        Dict(),
        config=True,
        help="The policy per hub group, over the defaults above: each entry may set "
        "`enabled`, `threshold_percent`, `idle_seconds`, `grace_seconds`. A group with "
        "`enabled: False` exempts its members; a person in several groups gets the most "
        "lenient. E.g. `{'students': {'enabled': True, 'idle_seconds': 3600}, "
        "'staff': {'enabled': False}}`.",
    )
    gpu_idle_interval_seconds = Float(
        30.0,
        config=True,
        help="Seconds between samples of each server's GPU utilisation (and decisions); a "
        "gap of three intervals without metrics restarts a server's idle clock. E.g. `30`.",
    )
    gpu_idle_stopped_by = Enum(
        ["service", "jupyterhub-idle-culler"],
        "service",
        config=True,
        help="Who stops a server whose grace period is over: `service` (this service, "
        "through the hub's API) or `jupyterhub-idle-culler` (its cull_arbiter_hook "
        "thinkube_core.idle_culler_hook.gpu_cull_arbiter asks this service; the service "
        "still samples and warns). E.g. `jupyterhub-idle-culler`.",
    )
    gpu_idle_proxy_url = Unicode(
        config=True,
        help="Where this service reaches notebook servers through the hub's proxy, to see "
        "whether a kernel is busy (`GET /user/<name>/api/kernels`, with the scope "
        "access:servers); empty: kernels cannot be read and no server is warned. Default: "
        "the origin of JUPYTERHUB_PUBLIC_URL. E.g. `http://proxy-public`.",
    )

    @default("gpu_idle_proxy_url")
    def _default_gpu_idle_proxy_url(self) -> str:
        public = urlparse(os.environ.get("JUPYTERHUB_PUBLIC_URL", ""))
        return f"{public.scheme}://{public.netloc}" if public.scheme and public.netloc else ""

    page_rows = Integer(
        50,
        config=True,
        help="Nodes per page of the service's own page (what the hub's Services menu opens); "
        "the rest are a filter or a page away. E.g. `50`.",
    )
    page_refresh_seconds = Float(
        10.0,
        config=True,
        help="Seconds between the service page's own refreshes while it is open in a browser "
        "(a 304 while nothing changed); 0: no refresh. E.g. `10`.",
    )

    token_cache_seconds = Integer(
        5,
        config=True,
        help="Seconds the hub's answer about a token is reused before the hub is asked "
        "again; a browser's login cookie holds a token and is checked the same way. A "
        "revoked token, or a browser logged out of the hub, stops working within this. At "
        "least 1. E.g. `5`.",
    )
    hub_auth_timeout_seconds = Float(
        5.0,
        config=True,
        help="Longest wait for the hub to check a token; past it (or when the hub cannot be "
        "reached, or fails) the request gets 503 with the reason. E.g. `5`.",
    )
    stop_with_hub = Bool(
        True,
        config=True,
        help="Stop when the hub process that started this service is gone (killed, crashed), "
        "releasing the port for the next hub's service: on Linux through the parent-death "
        "signal, elsewhere when the parent process changed and the hub's API has not "
        "answered for hub_gone_seconds. False for a service started by something else than "
        "the hub. E.g. `False`.",
    )
    hub_gone_seconds = Float(
        10.0,
        config=True,
        help="With stop_with_hub, where the parent-death signal is not available: once the "
        "hub process is gone, stop after its API has not answered for this long. E.g. `10`.",
    )

    # The pid of the process that started this one (the hub), recorded at the program's
    # start; `python -m hub_service` sets it before anything else runs.
    hub_pid = Integer(0)

    hub_auth = Instance(HubOAuth)
    catalog = Instance(Catalog, allow_none=True)
    registry = Instance(CollectorRegistry)
    # The live inventory the handlers answer from (the `inventory` option picks its kind).
    source = Instance(Inventory, allow_none=True)
    # RunPod offers and the reaper (not configured without an API key).
    cloud = Instance(Cloud, allow_none=True)
    # The GPU job queue (None with jobs_enabled off).
    jobs = Instance(JobQueue, allow_none=True)
    # Idle GPUs given back: the servers' GPU history and the policy's loop.
    gpu_idle = Instance(GpuIdleCuller, allow_none=True)

    def gpu_idle_policies(self) -> tuple[IdlePolicy, dict[str, IdlePolicy]]:
        """The default policy and each group's, checked (ServiceConfigError if not)."""
        try:
            default = IdlePolicy(
                enabled=self.gpu_idle_enabled,
                threshold_percent=self.gpu_idle_threshold_percent,
                idle_seconds=self.gpu_idle_seconds,
                grace_seconds=self.gpu_idle_grace_seconds,
            ).checked()
            groups = {
                str(group): policy_from_settings(default, settings, f"gpu_idle_groups[{group!r}]")
                for group, settings in self.gpu_idle_groups.items()
            }
        except PolicyError as err:
            raise ServiceConfigError(f"GPU idle policy: {err}") from None
        if self.gpu_idle_interval_seconds <= 0:
            raise ServiceConfigError("gpu_idle_interval_seconds must be more than 0")
        return default, groups

    @property
    def job_limits(self) -> JobLimits:
        return JobLimits(
            max_script_bytes=self.jobs_max_script_bytes,
            max_expected_s=self.jobs_max_expected_seconds,
        )

    @property
    def waiting_limits(self) -> WaitingLimits:
        return WaitingLimits(
            max_waiting=self.waiting_max_per_user,
            max_gpus=self.gpus_max_per_user,
            waiting_per_group=dict(self.waiting_max_per_group),
            gpus_per_group=dict(self.gpus_max_per_group),
        )

    @property
    def access_scopes(self) -> set[str]:
        return set(
            self.hub_auth.access_scopes or {f"access:services!service={self.service_name}"}
        ) | set(self.extra_access_scopes)

    # -- start-up ------------------------------------------------------------------

    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            # The command line wins over the file.
            if self.cli_config:
                self.update_config(self.cli_config)
        self._init_logging()
        if not os.environ.get("JUPYTERHUB_API_TOKEN"):
            raise ServiceConfigError(
                "JUPYTERHUB_API_TOKEN is not set: run this service from JupyterHub "
                "(c.JupyterHub.services, see docs/service.md)"
            )
        if self.token_cache_seconds < 1:
            # HubAuth reads 0 as "cache forever": the opposite of what 0 seems to ask for
            raise ServiceConfigError(
                f"token_cache_seconds must be at least 1 (it is {self.token_cache_seconds})"
            )
        if not self.hub_pid:
            self.hub_pid = os.getppid()
        self.hub_auth = HubOAuth(parent=self, cache_max_age=self.token_cache_seconds)
        # Daemon threads: a catalog call stuck in a slow database never holds the exit.
        self._db_pool = DaemonThreadPool(2, "thinkube-db")
        self._stopping: asyncio.Event | None = None
        self._http_server: HTTPServer | None = None
        self._stop_reason = ""
        self.hub_watch: HubWatch | None = None
        self._heap_task: asyncio.Task | None = None
        self._catalog_writes = 0
        self._images_read: tuple[int, asyncio.Future[bytes]] | None = None
        self._images_kept: tuple[int, float, bytes] | None = None  # writes, began, JSON
        self._cloud_kept: tuple[tuple, bytes] | None = None
        self.availability_answers = AvailabilityAnswers()
        self.openapi_bytes = OPENAPI_PATH.read_bytes()
        self._gpu_idle_policies = self.gpu_idle_policies()  # a bad policy stops the start here
        self._setup_metrics()

    def _init_logging(self) -> None:
        """The service's own loggers (thinkube.*), tornado's and asyncio's go where the
        application log goes (stderr, i.e. the hub's log, plus `log_file` if set)."""
        handlers = list(self.log.handlers)
        if self.log_file:
            file_handler = logging.FileHandler(os.path.expanduser(self.log_file))
            file_handler.setLevel(self.log_level)
            if handlers:
                file_handler.setFormatter(handlers[0].formatter)
            self.log.addHandler(file_handler)
            handlers.append(file_handler)
        for name in ("thinkube", "tornado", "asyncio"):
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.setLevel(self.log_level)
            logger.propagate = False

    def _setup_metrics(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "thinkube_request_duration_seconds",
            "Request latency",
            ["handler", "code"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.watch_restarts = Gauge(
            "thinkube_watch_restarts",
            "Watches resumed or relisted since start",
            registry=self.registry,
        )
        self.watch_relists = Gauge(
            "thinkube_watch_relists",
            "Full relists after 410 Gone since start",
            registry=self.registry,
        )
        self.watch_errors = Gauge(
            "thinkube_watch_errors",
            "Failed lists or watches (Kubernetes unreachable, errors) since start",
            registry=self.registry,
        )
        self.inventory_age = Gauge(
            "thinkube_inventory_age_seconds",
            "How long the data may have been out of date: 0 while the watches are healthy",
            registry=self.registry,
        )
        self.inventory_ready = Gauge(
            "thinkube_inventory_ready",
            "1 once listed and while the watches are connected",
            registry=self.registry,
        )
        self.inventory_stale = Gauge(
            "thinkube_inventory_stale",
            "1 while the inventory may be out of date",
            registry=self.registry,
        )
        self.node_count = Gauge("thinkube_nodes", "Nodes in the inventory", registry=self.registry)
        self.pod_count = Gauge("thinkube_pods", "Pods in the inventory", registry=self.registry)
        self.skipped_objects = Gauge(
            "thinkube_skipped_objects",
            "Malformed objects skipped",
            ["kind"],
            registry=self.registry,
        )
        self.requests_total = Counter(
            "thinkube_requests", "Requests served", ["handler"], registry=self.registry
        )
        self.gpu_servers_culled = Counter(
            "thinkube_gpu_servers_culled",
            "Notebook servers stopped because their GPUs stayed idle",
            registry=self.registry,
        )
        self.gpu_hours_reclaimed = Counter(
            "thinkube_gpu_hours_reclaimed",
            "GPU-hours the stopped idle servers had held idle (GPUs x idle time), given back",
            registry=self.registry,
        )
        self.gpu_servers_warned = Gauge(
            "thinkube_gpu_servers_warned",
            "Notebook servers warned now that they stop unless kept",
            registry=self.registry,
        )

    def observe_request(self, handler: web.RequestHandler, seconds: float) -> None:
        name = type(handler).__name__
        self.request_latency.labels(name, str(handler.get_status())).observe(seconds)
        self.requests_total.labels(name).inc()

    def update_gauges(self) -> None:
        inventory = self.source
        published = inventory.published
        stats = inventory.stats()
        self.watch_restarts.set(stats.get("watch_restarts", 0))
        self.watch_relists.set(stats.get("watch_relists", 0))
        self.watch_errors.set(stats.get("watch_errors", 0))
        since = inventory.stale_since()
        self.inventory_age.set(max(0.0, time.time() - since) if since is not None else 0)
        self.inventory_stale.set(1 if since is not None else 0)
        self.inventory_ready.set(1 if inventory.ready else 0)
        if self.gpu_idle is not None:
            self.gpu_servers_warned.set(self.gpu_idle.warned_count())
        self.node_count.set(published.node_count)
        self.pod_count.set(published.pod_count)
        for kind, count in (stats.get("skipped") or {}).items():
            self.skipped_objects.labels(kind).set(count)

    async def run_db(self, fn, *args):
        """Catalog calls are short, blocking SQLAlchemy transactions: keep them off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    def catalog_changed(self) -> None:
        """This service wrote the catalog: reads begun before now are out of date."""
        self._catalog_writes += 1

    def _jupyter_images_json(self) -> bytes:
        return json.dumps(self.catalog.list("jupyter")).encode()

    async def jupyter_images_json(self) -> bytes:
        """The Jupyter images as JSON, for the availability answer, without a query per
        request: a spawn form asks on every render. A read is kept until this service writes
        the catalog (whoever wrote an image sees it in their next answer) and is read again
        in the background every IMAGES_REFRESH_SECONDS meanwhile (a write made elsewhere,
        straight into the database, shows within that). Requests that must wait for a read
        share it (16 spawn forms at once make one query, not 16 queued behind two threads),
        unless this service has written the catalog since that read began."""
        kept = self._images_kept
        if kept is not None and kept[0] == self._catalog_writes:
            if time.monotonic() - kept[1] >= IMAGES_REFRESH_SECONDS:
                self._read_images()  # answered from the kept read meanwhile
            return kept[2]
        return await asyncio.shield(self._read_images())

    def _read_images(self) -> asyncio.Future[bytes]:
        """The read under way that began after the service's last write, or a new one."""
        pending = self._images_read
        if pending is not None and pending[0] == self._catalog_writes:
            return pending[1]
        writes, began = self._catalog_writes, time.monotonic()
        future = asyncio.ensure_future(self.run_db(self._jupyter_images_json))
        pending = self._images_read = (writes, future)

        def done(_: asyncio.Future) -> None:
            if self._images_read is pending:
                self._images_read = None
            if future.cancelled() or future.exception() is not None:
                return  # the next request reads again (a waiting one gets the error)
            kept = self._images_kept
            if kept is None or (kept[0], kept[1]) <= (writes, began):  # never an older read
                self._images_kept = (writes, began, future.result())

        future.add_done_callback(done)
        return future

    def cloud_json(self) -> bytes:
        """The cloud offers as the availability answer holds them (null without a cloud
        part), serialised once per refresh of the offers, not per request."""
        if self.cloud is None:
            return b"null"
        offers = self.cloud.offers
        key = (offers.configured, offers.offers, offers.fetched_at, offers.error)
        kept = self._cloud_kept
        if (
            kept is not None
            and len(kept[0]) == len(key)
            and all(a is b or a == b for a, b in zip(kept[0], key, strict=True))
        ):
            return kept[1]
        state = offers.state()
        state.pop("age_seconds", None)  # it changes with time; fetched_at says the same
        data = json.dumps(state).encode()
        self._cloud_kept = (key, data)
        return data

    def make_inventory(self) -> Inventory:
        if self.inventory == "kubernetes":
            from .cluster import KubernetesInventory

            return KubernetesInventory(
                kubeconfig=os.path.expanduser(self.kubeconfig),
                debounce_s=self.debounce_seconds,
                page_size=self.list_page_size,
                watch_timeout_s=self.watch_timeout_seconds,
                dcgm_endpoints=self.dcgm_endpoints,
                dcgm_interval_s=self.dcgm_interval_seconds,
                max_backoff_s=self.max_backoff_seconds,
            )
        if self.inventory == "local":
            return LocalInventory(
                hub_api_url=os.environ.get("JUPYTERHUB_API_URL", ""),
                api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
                refresh_s=self.local_refresh_seconds,
            )
        raise ServiceConfigError(
            f"unknown inventory {self.inventory!r}: this version serves 'kubernetes' and 'local'"
        )

    def make_gpu_idle(self) -> GpuIdleCuller:
        default, groups = self._gpu_idle_policies
        culler = GpuIdleCuller(
            self.source,
            HubServerControl(
                self.hub_auth.api_url, self.hub_auth.api_token, proxy_url=self.gpu_idle_proxy_url
            ),
            default_policy=default,
            group_policies=groups,
            interval_s=self.gpu_idle_interval_seconds,
            stop_servers=self.gpu_idle_stopped_by == "service",
            on_stop=self._count_culled,
        )
        if culler.any_policy_on and not self.gpu_idle_proxy_url:
            self.log.warning(
                "GPU idle policy on, but gpu_idle_proxy_url is empty: kernels cannot be read, "
                "so no server is warned or stopped"
            )
        return culler

    def _count_culled(self, key, decision, gpus: int, idle_seconds: float) -> None:
        self.gpu_servers_culled.inc()
        self.gpu_hours_reclaimed.inc(gpus * idle_seconds / 3600.0)

    def make_app(self) -> web.Application:
        return web.Application(
            [
                page_route(self.service_prefix),
                *routes(self.service_prefix),
                *job_routes(self.service_prefix),
                *upload_routes(self.service_prefix),
                *waiting_routes(self.service_prefix),
                *gpu_idle_routes(self.service_prefix),
                *docs_routes(self.service_prefix),
            ],
            default_handler_class=NotFoundHandler,
            service=self,
            cookie_secret=secrets.token_bytes(32),
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        cut = status == 500 and self._stopping is not None and self._stopping.is_set()
        if status < 400 or (status == 503 and isinstance(handler, ReadyHandler)):
            level = logging.DEBUG  # not ready is logged once, when it happens, by the inventory
        elif cut:
            # tornado's 500 for a request whose task the stop cancelled: its connection was
            # already closed, nobody received it
            level = logging.INFO
        else:
            level = logging.WARNING if status < 500 else logging.ERROR
        if all(level < sink.level for sink in self.log.handlers):
            # The application logger passes everything to its handlers, which filter: no
            # record at all for a line none of them would write (each request's 200).
            return
        # Never the query string: it may carry a token.
        self.log.log(
            level,
            "%s %s %s %.1fms",
            "cut by the stop:" if cut else status,
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    async def start_async(self) -> HTTPServer:
        """Open the catalog, listen, and start the inventory in the background. Kubernetes
        being unreachable is not an error here (the service serves not-ready until it is
        reachable); a bad catalog URL or seed is, since it will not fix itself."""
        self.source = self.make_inventory()
        self.catalog = Catalog(self.db_url)
        self.catalog.seed(self.seed_images)
        # before listening: the cloud route answers from it (not configured: it says why)
        self.cloud = Cloud.from_settings(
            api_key=self.runpod_api_key,
            key_file=self.runpod_api_key_file,  # ~ is expanded when read
            api_url=self.runpod_api_url,
            rest_url=self.runpod_rest_url,
            offers_ttl_s=self.cloud_offers_ttl_seconds,
            prefix=self.cloud_pod_prefix,
            reaper_interval_s=self.cloud_reaper_interval_seconds,
            reaper_grace_s=self.cloud_reaper_grace_seconds,
            hub_api_url=self.hub_auth.api_url,
            hub_token=self.hub_auth.api_token,
            environ=os.environ,
        )
        server = HTTPServer(self.make_app(), xheaders=True)
        try:
            server.listen(self.port, self.ip)
        except OSError as err:
            raise ServiceConfigError(
                f"cannot listen on {self.ip}:{self.port}: {err.strerror or err}"
            ) from None
        self._http_server = server  # stopped even if the start is cut short
        # Said once it listens: whoever waits for it to answer has seen this line.
        self.log.info(
            "%s listening on %s:%d%s (inventory: %s)",
            self.name,
            self.ip,
            self.port,
            self.service_prefix,
            type(self.source).__name__,
        )
        await self.source.start()
        await self.cloud.start()
        if self.jobs_enabled:
            self.jobs = make_job_queue(self)
            await self.jobs.start()
        self.gpu_idle = self.make_gpu_idle()
        self.gpu_idle.start()
        self._heap_task = asyncio.create_task(
            keep_frozen(
                lambda: self.source.ready,
                held=(lambda: len(self.jobs.active)) if self.jobs is not None else None,
            ),
            name="thinkube-heap",
        )
        return server

    def request_stop(self, reason: str) -> None:
        """Stop serving (a signal, or the hub gone); the first reason is the one logged."""
        if self._stopping is None or self._stopping.is_set():
            return
        self._stop_reason = reason
        self._stopping.set()

    async def stop_async(self, server: HTTPServer | None) -> None:
        """Stop within about a second, whatever is under way: no new connections first (the
        port is free for the next hub's service at once), then the background loops and
        watches (cancelled, not awaited to their timeouts), the open connections, the
        catalog. A part that outlasts its bound is logged and left behind."""
        if server is not None:
            server.stop()
        await cancel_and_wait(self._heap_task)
        parts = [
            part.stop()
            for part in (self.hub_watch, self.gpu_idle, self.jobs, self.source)
            if part is not None
        ]
        if self.cloud is not None:
            parts.append(self.cloud.aclose())
        await self._bounded(self._gather_logged(parts), 1.0, "the background loops")
        if server is not None:
            await self._bounded(server.close_all_connections(), 0.3, "the open connections")
        self._db_pool.shutdown(wait=False, cancel_futures=True)
        if self.catalog is not None:
            loop = asyncio.get_running_loop()
            closing = loop.run_in_executor(None, self.catalog.close)
            await self._bounded(closing, 0.3, "the catalog's database connections")
        await self._bounded(close_hub_http_client(), 0.2, "the hub API client")

    async def _gather_logged(self, steps: list[Awaitable]) -> None:
        for result in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(result, Exception):
                self.log.warning("stopping: a background part failed: %r", result)

    async def _bounded(self, step: Awaitable, seconds: float, what: str) -> None:
        try:
            async with asyncio.timeout(seconds):
                await step
        except TimeoutError:
            self.log.warning("stopping: not waiting longer than %gs for %s", seconds, what)
        except Exception as err:  # stopping goes on whatever one part did
            self.log.warning("stopping: %s failed: %r", what, err)

    def start(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        # Blocking helpers (name lookups, psutil and NVML reads) in daemon threads too:
        # asyncio.run waits for the default executor's threads when it ends.
        loop.set_default_executor(DaemonThreadPool(8, "thinkube-blocking"))
        self._stopping = asyncio.Event()
        # Before anything starts, so a signal during the start stops it too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            starting = asyncio.ensure_future(self.start_async())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a start that failed: its error
                if self.stop_with_hub:
                    self.hub_watch = HubWatch(
                        self.hub_pid,
                        self.hub_auth.api_url.rstrip("/") + "/",
                        self.request_stop,
                        grace_s=self.hub_gone_seconds,
                    )
                    self.hub_watch.start()
            else:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            await stopping
        finally:
            if self._stop_reason:
                # SIGTERM also when the hub died (the parent-death signal)
                self.log.info("%s stopping: %s", self.name, self._stop_reason)
            await self.stop_async(self._http_server)
            if self._stop_reason:
                self.log.info("%s stopped", self.name)


async def close_hub_http_client() -> None:
    """JupyterHub 6 checks tokens through a shared aiohttp session: close it (5.x uses
    tornado's client, nothing to close)."""
    try:
        from jupyterhub.httpclient import JupyterHubHTTPClient
    except ImportError:
        return
    if JupyterHubHTTPClient.initialized():
        await JupyterHubHTTPClient.loop_instance().close()


def options_markdown() -> str:
    """The table of ThinkubeService options for docs/service.md, made from the traits (a
    test keeps the document in step with it)."""
    flags = {
        target.split(".", 1)[1]: f"--{alias}"
        for alias, target in ThinkubeService.aliases.items()
        if target.startswith("ThinkubeService.")
    }
    dynamic = {
        name
        for cls in ThinkubeService.__mro__
        for name in getattr(cls, "_trait_default_generators", {})
    }
    rows = [
        "| option | command line | type | default | what it does |",
        "|---|---|---|---|---|",
    ]
    for name, trait in sorted(ThinkubeService.class_own_traits(config=True).items()):
        if name in dynamic:
            default = "computed: see its description"
        else:
            default = f"`{trait.default()!r}`"
        help_text = " ".join(trait.help.split()).replace("|", "\\|")
        flag = flags.get(name, f"--ThinkubeService.{name}=...")
        rows.append(
            f"| `ThinkubeService.{name}` | `{flag}` | {type(trait).__name__} | {default} "
            f"| {help_text} |"
        )
    return "\n".join(rows) + "\n"


class ServiceConfigError(Exception):
    """A configuration the service cannot start with; `main` reports it without a traceback."""


def main(argv=None, hub_pid: int | None = None) -> None:
    """Run the service; `hub_pid` is the process that started it (default: the parent)."""
    app = ThinkubeService.instance()
    if hub_pid:
        app.hub_pid = hub_pid
    try:
        app.initialize(argv)
        app.start()
    except (ServiceConfigError, CatalogError) as err:
        app.log.critical("thinkube-resources cannot start: %s", err)
        raise SystemExit(1) from None


__all__ = ["ServiceConfigError", "ThinkubeService", "main", "options_markdown"]
