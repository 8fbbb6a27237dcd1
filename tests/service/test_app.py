"""The service as a program: its command line, its refusal to start without a hub, the
documentation of its options, and the example hub configuration."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from traitlets.config import Config

from hub_service.app import ThinkubeService, options_markdown

REPO = Path(__file__).resolve().parents[2]


def run_service(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hub_service", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_hub_token_it_says_so_and_exits_1():
    result = run_service("--db-url", "sqlite://")
    assert result.returncode == 1
    assert "JUPYTERHUB_API_TOKEN is not set: run this service from JupyterHub" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_inventory_is_a_clear_error(tmp_path):
    result = run_service(
        "--inventory",
        "nomad",
        "--db-url",
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        env={
            "JUPYTERHUB_API_TOKEN": "not-a-real-token",
            "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 1
    assert "unknown inventory 'nomad'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-a-real-token" not in result.stderr


def test_help_all_lists_every_option():
    result = run_service("--help-all")
    assert result.returncode == 0
    for name in ThinkubeService.class_own_traits(config=True):
        assert f"--ThinkubeService.{name}" in result.stdout


def test_docs_list_every_option_as_the_traits_say():
    doc = (REPO / "docs" / "service.md").read_text()
    assert options_markdown() in doc, (
        "docs/service.md is out of date: paste hub_service.app.options_markdown() into its "
        "Options section"
    )


def test_example_hub_config_wires_the_service(tmp_path):
    config = Config()
    path = REPO / "examples" / "kubesim" / "jupyterhub_config.py"
    env = {"THINKUBE_DEV_DIR": str(tmp_path), "THINKUBE_SERVICE_PORT": "18181"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        namespace = {"get_config": lambda: config, "__file__": str(path)}  # as traitlets does
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    [service] = config.JupyterHub.services
    assert service["name"] == "thinkube-resources"
    assert service["url"] == "http://127.0.0.1:18181"
    assert service["command"][:3] == [sys.executable, "-m", "hub_service"]
    assert service["command"][3:5] == ["--kubeconfig", str(tmp_path / "kubeconfig")]
    assert "custom:thinkube:images:write" in config.JupyterHub.custom_scopes
    roles = {role["name"]: role for role in config.JupyterHub.load_roles}
    assert "access:services!service=thinkube-resources" in roles["user"]["scopes"]
    assert "custom:thinkube:images:write" in roles["thinkube-image-writers"]["scopes"]


def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_service(
            "--db-url",
            f"sqlite:///{tmp_path / 'c.sqlite'}",
            env={
                "JUPYTERHUB_API_TOKEN": "not-a-real-token",
                "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
            },
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_token_cache_of_0_is_refused_not_read_as_forever(tmp_path):
    result = run_service(
        "--ThinkubeService.token_cache_seconds=0",
        "--db-url",
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        env={"JUPYTERHUB_API_TOKEN": "not-a-real-token"},
    )
    assert result.returncode == 1
    assert "token_cache_seconds must be at least 1 (it is 0)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_idle_gpu_policy_is_a_clear_error(tmp_path):
    config = tmp_path / "service_config.py"
    config.write_text(
        "c.ThinkubeService.gpu_idle_groups = {'students': {'enabled': True, 'idle': 3600}}\n"
    )
    result = run_service(
        "--config",
        str(config),
        "--db-url",
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        env={"JUPYTERHUB_API_TOKEN": "not-a-real-token"},
    )
    assert result.returncode == 1
    assert (
        "GPU idle policy: gpu_idle_groups['students']: unknown setting 'idle' (known: enabled, "
        "threshold_percent, idle_seconds, grace_seconds)"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    result = run_service(
        "--ThinkubeService.gpu_idle_threshold_percent=120",
        "--db-url",
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        env={"JUPYTERHUB_API_TOKEN": "not-a-real-token"},
    )
    assert result.returncode == 1
    assert "threshold_percent is a percentage, 0 to 100 (it is 120.0)" in result.stderr
