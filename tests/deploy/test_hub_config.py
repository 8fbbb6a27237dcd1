"""The hub's configuration as Zero to JupyterHub builds it from values.yaml (the minimal
install) and from values.yaml + lab.yaml (hub.config passed through, then the
hub.extraConfig snippets in sorted key order), and what it yields: ThinkubeSpawner with the
files' settings, the managed service, roles and the custom scope, the chart's login for the
minimal install; for the lab, GenericOAuthenticator against the realm, its claims and the
cloud price caps by group."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from jupyterhub.objects import Hub
from traitlets.config import Config

from tests.deploy.z2jh import (
    LAB,
    VALUES,
    chart_values,
    environment,
    get_path,
    helm_merge,
    hub_config,
    hub_env,
    overlay_values,
    spawner_for,
)

REALM = "https://auth.example.test/realms/lab"
SECRETS = {"thinkube-keycloak/client-secret": "keycloak-client-secret-for-tests"}


INSTALLS = {"minimal": (VALUES,), "minimal+lab": (VALUES, LAB)}
LAB_CLAIMS = [
    ("thinkube-notebooks", "/home/jovyan/notebooks"),
    ("thinkube-datasets", "/datasets"),
    ("thinkube-models", "/models"),
]


@pytest.fixture(params=INSTALLS, ids=INSTALLS.keys())
def install(request):
    return request.param


@pytest.fixture
def any_values(install):
    """The minimal file, or the minimal file and the lab's, merged as helm merges them. The
    chart's defaults (../shared) are left out where a test needs nothing of them."""
    return overlay_values(*INSTALLS[install])


def built(values) -> Config:
    env = {**hub_env(values, SECRETS), "KEYCLOAK_REALM_URL": REALM}
    with environment(env):
        c, _ = hub_config(values)
    return c


@pytest.fixture
def any_config(any_values) -> Config:
    return built(any_values)


@pytest.fixture
def values():
    """The lab's install: the minimal file, then lab.yaml."""
    return overlay_values(VALUES, LAB)


@pytest.fixture
def config(values) -> Config:
    return built(values)


def test_extra_config_runs_in_sorted_key_order(values):
    keys = list(get_path(values, "hub.extraConfig"))
    assert keys == sorted(keys)  # written in the order z2jh runs them
    probe = {
        "hub": {
            "extraConfig": {
                key: f"c.Probe.seen = c.Probe.get('seen', []) + [{key!r}]"
                for key in ("99-last", "00-first", "50-middle")
            }
        }
    }
    with environment({"KEYCLOAK_REALM_URL": REALM}):
        c, _ = hub_config(helm_merge(values, probe))
    assert c.Probe.seen == ["00-first", "50-middle", "99-last"]


def test_the_spawner_is_thinkube_spawner_with_the_values_settings(any_config, any_values):
    from thinkube_spawner import ThinkubeSpawner

    assert any_config.JupyterHub.spawner_class is ThinkubeSpawner
    wanted = get_path(any_values, "hub.config.ThinkubeSpawner")
    assert wanted  # the values set them
    for name, value in wanted.items():
        assert any_config.ThinkubeSpawner[name] == value, name


@pytest.mark.parametrize("chart_defaults", [False, True], ids=["files", "with-chart-defaults"])
async def test_thinkube_spawner_instantiates_with_that_config(
    request, install, chart_defaults, kubesim
):
    """With the files alone, and on the chart's defaults (which must not undo them)."""
    from thinkube_spawner import ThinkubeSpawner

    if chart_defaults:
        values = chart_values(request.getfixturevalue("shared_dir"), *INSTALLS[install])
    else:
        values = overlay_values(*INSTALLS[install])
    config = built(values)

    user = SimpleNamespace(name="alice", id=7, url="/user/alice/")
    spawner = ThinkubeSpawner(
        config=config,
        hub=Hub(),
        user=user,
        api_token="not-a-real-token",
        oauth_client_id="jupyterhub-user-alice",
        _mock=True,
        k8s_api_host=kubesim.url,
        namespace="jupyterhub",
    )
    for name, value in get_path(values, "hub.config.ThinkubeSpawner").items():
        if name in spawner.trait_names():
            assert getattr(spawner, name) == value, name
    assert spawner.availability_url == "http://127.0.0.1:8181/services/thinkube-resources/"
    # The form is ThinkubeSpawner's own callable profile list: the chart's
    # singleuser.profileList ([] by default) must not replace it.
    assert spawner.options_form == spawner.render_options_form
    settings = spawner.pod_settings()
    # The minimal install mounts no claim (the spawner's own default would mount three).
    assert [(v.claim, v.mount_path) for v in settings.storage.shared] == (
        LAB_CLAIMS if install == "minimal+lab" else []
    )
    assert settings.storage.scratch_size_limit == "100Gi"
    menu = spawner.menu_settings()
    assert menu.gpu_choices == (0, 1, 2) and menu.pod.settings.gpu_taint_keys == ("nvidia.com/gpu",)
    # z2jh's settings reach it through KubeSpawner's config section.
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        spawner.tolerations
    )
    if install == "minimal+lab":
        assert spawner.environment["THINKUBE_DATASETS_BUCKET"] == "datasets"
        assert spawner.environment["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == (
            "thinkube-s3"
        )
    else:
        assert spawner.environment == {}
    if chart_defaults:
        assert spawner.start_timeout == get_path(values, "singleuser.startTimeout")


def test_the_managed_service_and_its_token(any_values):
    with environment({"KEYCLOAK_REALM_URL": REALM}):
        c, seeded = hub_config(any_values)
    services = {s["name"]: s for s in c.JupyterHub.services}
    service = services["thinkube-resources"]
    assert service["url"] == "http://hub:8181"
    assert service["command"][:3] == ["python3", "-m", "hub_service"]
    assert service["api_token"] == seeded["hub.services.thinkube-resources.apiToken"]
    assert set(services) == {"thinkube-resources", "image-pipeline"}


def test_the_managed_service_can_load_the_in_cluster_config(any_config, tmp_path):
    """JupyterHub starts a managed service with its `environment` and only a few of the
    hub's variables (Spawner.env_keep), so KUBERNETES_SERVICE_HOST/PORT, which the in-cluster
    config needs, must come from the service's own environment."""
    from jupyterhub.spawner import LocalProcessSpawner
    from kubernetes_asyncio import client
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

    service = next(s for s in any_config.JupyterHub.services if s["name"] == "thinkube-resources")
    kept = set(LocalProcessSpawner().env_keep)
    assert not {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"} & kept
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("service-account-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    configuration = client.Configuration()
    InClusterConfigLoader(str(token), str(ca), environ=dict(service["environment"])).load_and_set(
        configuration
    )
    assert configuration.host == "https://kubernetes.default.svc:443"


def test_roles_and_the_custom_scope(any_config):
    scope = "custom:thinkube:images:write"
    assert scope in any_config.JupyterHub.custom_scopes
    roles = {role["name"]: role for role in any_config.JupyterHub.load_roles}
    assert scope in roles["image-publisher"]["scopes"]
    assert "self" in roles["user"]["scopes"]


def test_the_minimal_install_logs_in_with_the_charts_authenticator(shared_dir):
    """The chart's default, `dummy`: JupyterHub's DummyAuthenticator, any user allowed."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import DummyAuthenticator

    config = built(chart_values(shared_dir, VALUES))
    assert config.JupyterHub.authenticator_class == "dummy"
    hub = JupyterHub(config=config)
    assert hub.authenticator_class is DummyAuthenticator
    assert DummyAuthenticator(config=config).allow_all


def test_generic_oauthenticator_against_the_realm(config):
    from oauthenticator.generic import GenericOAuthenticator

    assert config.JupyterHub.authenticator_class == "generic-oauth"
    with environment({"OAUTH_CLIENT_SECRET": "from-the-secret"}):
        auth = GenericOAuthenticator(config=config)
        # From the env var the Secret fills, never from the values.
        assert auth.client_secret == "from-the-secret"
    assert auth.authorize_url == f"{REALM}/protocol/openid-connect/auth"
    assert auth.token_url == f"{REALM}/protocol/openid-connect/token"
    assert auth.userdata_url == f"{REALM}/protocol/openid-connect/userinfo"
    assert auth.username_claim == "preferred_username"
    assert auth.manage_groups and auth.enable_auth_state
    assert auth.allowed_groups == {"lab-members"} and auth.admin_groups == {"lab-admins"}
    assert "admin" in auth.admin_users


def test_the_realm_url_may_end_with_a_slash(values):
    with environment({"KEYCLOAK_REALM_URL": REALM + "/"}):
        c, _ = hub_config(values)
    assert c.GenericOAuthenticator.token_url == f"{REALM}/protocol/openid-connect/token"


@pytest.mark.parametrize(
    "user,groups,cap",
    [
        ("alice", ["lab-members"], 0.5),
        ("alice", ["lab-members", "gpu-users"], 2.0),  # the highest of the user's groups
        ("alice", ["lab-admins"], 10.0),
        ("alice", ["visitors"], 0.0),  # no cap: no cloud GPUs
        ("alice", [], 0.0),
        ("bob", ["lab-admins"], 0.25),  # a user's own cap wins
    ],
)
async def test_cloud_price_cap_from_hub_groups(config, user, groups, cap):
    config.ThinkubeSpawner.cloud_user_price_caps = {"bob": 0.25}
    spawner = spawner_for(config, user, groups)
    assert spawner.user_price_cap() == cap


async def test_cloud_gpus_need_a_key_and_a_public_url(config, monkeypatch):
    """With caps but no RunPod key or public URL in the values, nobody is offered cloud."""
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_API_KEY_FILE", raising=False)
    spawner = spawner_for(config, "alice", ["lab-admins"])
    assert spawner.cloud_enabled and spawner.cloud_cap() == 0.0
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_" + "x" * 40)
    config.ThinkubeSpawner.cloud_public_hub_url = "https://hub.thinkube.lab/"
    assert spawner_for(config, "alice", ["lab-admins"]).cloud_cap() == 10.0
