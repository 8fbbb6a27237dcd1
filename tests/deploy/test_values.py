"""helm-values/*.yaml against the Zero to JupyterHub chart: the chart's defaults deep-merged
with each overlay (as helm does) validate against the chart's values schema."""

from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from tests.deploy.z2jh import (
    HELM_VALUES,
    KEYCLOAK,
    REPO,
    VALUES,
    chart_values,
    get_path,
    load_yaml,
    set_path,
)

SERVICE = "thinkube-resources"
ACCESS = f"access:services!service={SERVICE}"
WRITE_SCOPE = "custom:thinkube:images:write"


@pytest.fixture
def validator(shared_dir):
    schema = load_yaml(shared_dir / "fixtures" / "z2jh" / "values.schema.yaml")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors_of(validator, values) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    ]


def test_chart_defaults_alone_validate(validator, shared_dir):
    # The reference point: the schema accepts the chart's own defaults.
    assert errors_of(validator, chart_values(shared_dir)) == []


@pytest.mark.parametrize(
    "overlays",
    [(VALUES,), (KEYCLOAK,), (VALUES, KEYCLOAK)],
    ids=["values", "keycloak", "values+keycloak"],
)
def test_overlays_validate_against_the_chart_schema(validator, shared_dir, overlays):
    assert errors_of(validator, chart_values(shared_dir, *overlays)) == []


def test_the_schema_catches_mistakes(validator, shared_dir):
    # The check is real: a misplaced key or a wrong type is an error.
    wrong = chart_values(shared_dir, VALUES, {"hub": {"loadRole": {}}})
    assert any("loadRole" in e for e in errors_of(validator, wrong))
    wrong = chart_values(shared_dir, VALUES, {"hub": {"service": {"extraPorts": "8181"}}})
    assert errors_of(validator, wrong)


def test_sync_repo_extra_file_as_the_readme_adds_it(validator, shared_dir):
    # README: --set-file singleuser.extraFiles.sync-repo.stringData=scripts/sync-repo.sh
    #         --set singleuser.extraFiles.sync-repo.mountPath=/usr/local/bin/sync-repo
    #         --set singleuser.extraFiles.sync-repo.mode=493
    values = chart_values(shared_dir, VALUES, KEYCLOAK)
    script = (REPO / "scripts" / "sync-repo.sh").read_text()
    set_path(values, "singleuser.extraFiles.sync-repo.stringData", script)
    set_path(values, "singleuser.extraFiles.sync-repo.mountPath", "/usr/local/bin/sync-repo")
    set_path(values, "singleuser.extraFiles.sync-repo.mode", 493)
    assert errors_of(validator, values) == []
    readme = (HELM_VALUES / "README.md").read_text()
    for flag in (
        "--set-file singleuser.extraFiles.sync-repo.stringData=scripts/sync-repo.sh",
        "--set singleuser.extraFiles.sync-repo.mountPath=/usr/local/bin/sync-repo",
        "--set singleuser.extraFiles.sync-repo.mode=493",
    ):
        assert flag in readme


def test_the_service_is_wired_as_z2jh_documents(shared_dir):
    values = chart_values(shared_dir, VALUES)
    service = get_path(values, f"hub.services.{SERVICE}")
    assert service["url"] == "http://hub:8181"
    assert service["command"][:3] == ["python3", "-m", "hub_service"]
    # The token is the chart's to generate (or hub.existingSecret's), never inlined.
    for entry in get_path(values, "hub.services").values():
        assert "apiToken" not in entry and "api_token" not in entry
    assert {"name": "thinkube", "port": 8181, "targetPort": 8181} in get_path(
        values, "hub.service.extraPorts"
    )
    ingress = get_path(values, "hub.networkPolicy.ingress")
    assert any({"port": 8181} in rule.get("ports", []) for rule in ingress)
    egress = get_path(values, "proxy.chp.networkPolicy.egress")
    assert any({"port": 8181} in rule.get("ports", []) for rule in egress)


def test_roles_grant_what_the_service_needs(shared_dir):
    roles = get_path(chart_values(shared_dir, VALUES), "hub.loadRoles")
    assert roles[SERVICE]["services"] == [SERVICE] and ACCESS in roles[SERVICE]["scopes"]
    # the cloud reaper's: the users' servers and the pod id in their state (docs/service.md)
    assert {"list:users", "read:servers", "admin:server_state"} <= set(roles[SERVICE]["scopes"])
    assert set(roles["user"]["scopes"]) == {"self", ACCESS}
    publisher = roles["image-publisher"]
    assert set(publisher["scopes"]) == {WRITE_SCOPE, ACCESS}
    assert publisher["services"] == ["image-pipeline"]
    assert "image-pipeline" in get_path(chart_values(shared_dir, VALUES), "hub.services")


def test_singleuser_defaults(shared_dir):
    values = chart_values(shared_dir, VALUES)
    assert get_path(values, "singleuser.storage.type") == "none"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in get_path(
        values, "singleuser.extraTolerations"
    )
    env = get_path(values, "singleuser.extraEnv")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"]  # referenced, not inlined


def test_keycloak_secrets_are_referenced_not_inlined(shared_dir):
    keycloak = load_yaml(KEYCLOAK)
    generic = keycloak["hub"]["config"]["GenericOAuthenticator"]
    assert "client_secret" not in generic
    secret = keycloak["hub"]["extraEnv"]["OAUTH_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "thinkube-keycloak", "key": "client-secret"}
    text = KEYCLOAK.read_text().lower()
    assert not re.search(r"(secret|password)\s*:\s*['\"]?[a-z0-9]{12,}", text)


def test_dockerfile_builds_on_the_matching_hub_image(shared_dir):
    dockerfile = (HELM_VALUES / "Dockerfile").read_text()
    version = re.search(r"^ARG Z2JH_VERSION=(\S+)$", dockerfile, re.M).group(1)
    # The fixture is chart 4.x (JupyterHub 5.5): its hub image is k8s-hub:4.<minor>.<patch>.
    assert re.fullmatch(r"4\.\d+\.\d+", version)
    defaults = chart_values(shared_dir)
    assert get_path(defaults, "hub.image.name") == "quay.io/jupyterhub/k8s-hub"
    assert re.search(r"^FROM quay\.io/jupyterhub/k8s-hub:\$\{Z2JH_VERSION\}$", dockerfile, re.M)
    assert re.search(r"pip install .*/tmp/thinkube-hub", dockerfile)
    readme = (HELM_VALUES / "README.md").read_text()
    assert f"--version {version}" in readme


def test_readme_points_at_files_that_exist():
    readme = (HELM_VALUES / "README.md").read_text()
    for path in set(
        re.findall(r"(?<![\w./-])((?:helm-values|scripts|notebooks)/[\w./-]+\w)", readme)
    ):
        assert (REPO / path).exists(), path
    for needle in (
        "helm upgrade --install",
        "curl -X PUT",
        "/api/v1/images/",
        WRITE_SCOPE,
        "runpod",
    ):
        assert needle.lower() in readme.lower(), needle


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", markdown, re.M | re.S)


@pytest.mark.parametrize("doc", ["README.md", "manifests/dcgm-exporter.md"])
def test_values_snippets_in_the_docs_validate(validator, shared_dir, doc):
    """The values overlays the docs show (the RunPod one, the DCGM one) are valid too."""
    schema_keys = set(validator.schema["properties"])
    snippets = [
        overlay
        for overlay in map(yaml.safe_load, yaml_blocks((HELM_VALUES / doc).read_text()))
        if isinstance(overlay, dict) and set(overlay) <= schema_keys
    ]
    assert snippets, f"no values snippet found in {doc}"
    for overlay in snippets:
        values = chart_values(shared_dir, VALUES, KEYCLOAK, overlay)
        assert errors_of(validator, values) == []


def test_user_environment_is_what_the_notebooks_and_scripts_read(shared_dir):
    """Every variable values.yaml gives user servers is read by a notebook or sync-repo."""
    env = get_path(chart_values(shared_dir, VALUES), "singleuser.extraEnv")
    readers = "\n".join(
        path.read_text()
        for path in [*(REPO / "notebooks").glob("*.ipynb"), REPO / "scripts" / "sync-repo.sh"]
    )
    for name in env:
        if name.startswith(("THINKUBE_", "AWS_ENDPOINT")):
            assert name in readers, name
