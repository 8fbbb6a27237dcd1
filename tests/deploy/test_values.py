"""helm-values/values.yaml (the minimal install) and lab.yaml (the lab's overlay, applied
after it) against the Zero to JupyterHub chart: the chart's defaults deep-merged with the
files (as helm does) validate against the chart's values schema, and so do the README's
`helm upgrade --install` commands as written. The files' own content is checked without the
chart: the minimal file carries nothing of one lab, and neither file carries a secret."""

from __future__ import annotations

import re
import shlex

import jsonschema
import pytest
import yaml

from tests.deploy.z2jh import (
    HELM_VALUES,
    LAB,
    LAB_MANIFESTS,
    MANIFESTS,
    REPO,
    VALUES,
    all_manifests,
    chart_values,
    get_path,
    load_yaml,
    overlay_values,
    set_path,
)

SERVICE = "thinkube-resources"
ACCESS = f"access:services!service={SERVICE}"
WRITE_SCOPE = "custom:thinkube:images:write"
# Where the README installs, and the namespace the manifests name.
NAMESPACE = "jupyterhub"


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


INSTALLS = {"minimal": (VALUES,), "minimal+lab": (VALUES, LAB)}
README = HELM_VALUES / "README.md"
# The key under which the chart keeps a service's API token in its Secret `hub`.
TOKEN_KEY = f"hub.services.{SERVICE}.apiToken"


@pytest.mark.parametrize("overlays", INSTALLS.values(), ids=INSTALLS.keys())
def test_installs_validate_against_the_chart_schema(validator, shared_dir, overlays):
    assert errors_of(validator, chart_values(shared_dir, *overlays)) == []


def test_the_schema_catches_mistakes(validator, shared_dir):
    # The check is real: a misplaced key or a wrong type is an error.
    wrong = chart_values(shared_dir, VALUES, {"hub": {"loadRole": {}}})
    assert any("loadRole" in e for e in errors_of(validator, wrong))
    wrong = chart_values(shared_dir, VALUES, {"hub": {"service": {"extraPorts": "8181"}}})
    assert errors_of(validator, wrong)


# -- the README's install commands ---------------------------------------------------------


def shell_commands(markdown: str) -> list[list[str]]:
    """The commands of the README's bash blocks, each split into words as the shell would
    (continuation lines joined, comments dropped; variables left as written)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.M | re.S):
        pending = ""  # lines of a command whose quotes are still open
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:
                continue
            pending = ""
            if words:
                commands.append(words)
        assert not pending, f"unclosed quotes in a bash block: {pending[:80]}"
    return commands


def helm_value(text: str):
    """What helm's --set makes of a value: integers and booleans typed, the rest strings."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"true": True, "false": False}.get(text, text)


def install_commands() -> list[dict]:
    """The README's `helm upgrade --install` commands: their -f files, the values they set
    (--set, --set-file) and their other flags."""
    installs = []
    for words in shell_commands(README.read_text()):
        if words[:3] != ["helm", "upgrade", "--install"]:
            continue
        install = {"files": [], "set": {}, "flags": {}, "chart": words[4]}
        args = iter(words[5:])
        for arg in args:
            if arg == "-f":
                install["files"].append(REPO / next(args))
            elif arg in ("--set", "--set-file"):
                key, _, value = next(args).partition("=")
                if arg == "--set-file":
                    value = (REPO / value).read_text()
                install["set"][key] = helm_value(value) if arg == "--set" else value
            else:
                install["flags"][arg] = next(args)
        installs.append(install)
    return installs


def test_the_readme_installs_the_minimal_file_then_the_lab_overlay():
    installs = install_commands()
    assert [i["files"] for i in installs] == [[VALUES], [VALUES, LAB]]
    for install in installs:
        assert install["chart"] == "jupyterhub/jupyterhub"
        assert install["flags"]["--namespace"] == NAMESPACE
    minimal, lab = installs
    # The minimal install names the image the reader built; the lab's comes from lab.yaml.
    assert set(minimal["set"]) == {"hub.image.name", "hub.image.tag"}
    assert get_path(load_yaml(LAB), "hub.image.name").startswith("registry.thinkube.lab/")


@pytest.mark.parametrize("index", [0, 1], ids=INSTALLS.keys())
def test_the_readme_install_commands_validate(validator, shared_dir, index):
    install = install_commands()[index]
    values = chart_values(shared_dir, *install["files"])
    for key, value in install["set"].items():
        set_path(values, key, value)
    assert errors_of(validator, values) == []


def test_the_lab_command_adds_sync_repo():
    (_, lab) = install_commands()
    assert lab["set"] == {
        "singleuser.extraFiles.sync-repo.stringData": (REPO / "scripts/sync-repo.sh").read_text(),
        "singleuser.extraFiles.sync-repo.mountPath": "/usr/local/bin/sync-repo",
        "singleuser.extraFiles.sync-repo.mode": 0o755,
    }


def test_the_namespace_is_the_one_the_manifests_name():
    """The RBAC binding's subject and the lab's claims are in the namespace the README
    installs into."""
    namespaces = {
        subject["namespace"]
        for _, doc in all_manifests(MANIFESTS)
        for subject in doc.get("subjects", [])
    } | {
        doc["metadata"]["namespace"]
        for _, doc in all_manifests(LAB_MANIFESTS)
        if doc["kind"] == "PersistentVolumeClaim"
    }
    assert namespaces == {NAMESPACE}


def test_the_readme_health_check_asks_the_service_with_its_token():
    """The README checks the service from inside the hub pod: its ready route, with the
    token the chart keeps in its Secret, which the hub pod mounts as a file."""
    from hub_service.handlers import routes

    prefix = f"/services/{SERVICE}/"
    served = {pattern for pattern, *_ in routes(prefix)}
    checks = [
        " ".join(words)
        for words in shell_commands(README.read_text())
        if words[:2] == ["kubectl", "-n"] and "exec" in words and "deploy/hub" in words
    ]
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/\S*[a-z])", " ".join(checks))
    assert {path for _, path in urls} >= {prefix + "api/v1/health", prefix + "api/v1/ready"}
    for port, path in urls:
        assert path in served, path
        assert get_path(load_yaml(VALUES), f"hub.services.{SERVICE}.url").endswith(f":{port}")
    (ready,) = [c for c in checks if "api/v1/ready" in c]
    assert f"/usr/local/etc/jupyterhub/secret/{TOKEN_KEY}" in ready
    assert "Authorization: token" in ready


# -- what the files say ------------------------------------------------------------------


def test_the_service_is_wired_as_z2jh_documents():
    for overlays in INSTALLS.values():
        values = overlay_values(*overlays)
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


def test_roles_grant_what_the_service_needs():
    values = overlay_values(VALUES)
    roles = get_path(values, "hub.loadRoles")
    assert roles[SERVICE]["services"] == [SERVICE] and ACCESS in roles[SERVICE]["scopes"]
    # the cloud reaper's: the users' servers and the pod id in their state (docs/service.md)
    assert {"list:users", "read:servers", "admin:server_state"} <= set(roles[SERVICE]["scopes"])
    assert set(roles["user"]["scopes"]) == {"self", ACCESS}
    publisher = roles["image-publisher"]
    assert set(publisher["scopes"]) == {WRITE_SCOPE, ACCESS}
    assert publisher["services"] == ["image-pipeline"]
    assert "groups" not in publisher  # no groups without a login that makes them
    assert "image-pipeline" in get_path(values, "hub.services")
    # The lab adds its Keycloak group and keeps the rest.
    lab = get_path(overlay_values(VALUES, LAB), "hub.loadRoles.image-publisher")
    assert lab == {**publisher, "groups": ["image-publishers"]}


# Names of the lab's own services and choices: none may appear in the minimal file's values.
LAB_WORDS = (
    "thinkube.lab",
    "seaweedfs",
    "keycloak",
    "generic-oauth",
    "thinkube-s3",
    "aws_",
    "_git_",
    "thinkube-notebooks",
)


def test_the_minimal_file_has_nothing_of_the_lab():
    values = load_yaml(VALUES)
    text = yaml.safe_dump(values).lower()
    for word in LAB_WORDS:
        assert word not in text, word
    # The chart's login, no shared claims, no Secret of the lab, scratch only.
    assert "authenticator_class" not in get_path(values, "hub.config.JupyterHub", {})
    assert not [c for c in get_path(values, "hub.config") if c.endswith("Authenticator")]
    spawner = get_path(values, "hub.config.ThinkubeSpawner")
    assert spawner["shared_volumes"] == []
    assert spawner["scratch_size_limit"] and spawner["scratch_path"]
    assert get_path(values, "singleuser.storage.type") == "none"
    assert "secretkeyref" not in text
    assert get_path(values, "singleuser.extraEnv") is None
    assert get_path(values, "singleuser.networkPolicy") is None  # the chart's egress rules
    # The words are there to be found: the lab's file has each of them.
    lab_text = yaml.safe_dump(load_yaml(LAB)).lower()
    for word in LAB_WORDS:
        assert word in lab_text, word


def test_user_servers_tolerate_the_gpu_taint():
    for overlays in INSTALLS.values():
        values = overlay_values(*overlays)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
            get_path(values, "singleuser.extraTolerations")
        )
        assert get_path(values, "singleuser.storage.type") == "none"


def test_the_lab_mounts_its_claims_and_refers_to_its_secrets():
    values = overlay_values(VALUES, LAB)
    claims = [v["claim"] for v in get_path(values, "hub.config.ThinkubeSpawner.shared_volumes")]
    pvcs = [d for _, d in all_manifests(LAB_MANIFESTS) if d["kind"] == "PersistentVolumeClaim"]
    assert sorted(claims) == sorted(d["metadata"]["name"] for d in pvcs)
    env = get_path(values, "singleuser.extraEnv")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "thinkube-s3"
    assert get_path(values, "singleuser.networkPolicy.egressAllowRules.privateIPs") is True
    generic = get_path(values, "hub.config.GenericOAuthenticator")
    assert "client_secret" not in generic
    secret = get_path(values, "hub.extraEnv.OAUTH_CLIENT_SECRET.valueFrom.secretKeyRef")
    assert secret == {"name": "thinkube-keycloak", "key": "client-secret"}
    # Everything else of the minimal file stays (helm merges maps key by key).
    minimal = get_path(overlay_values(VALUES), "hub.config.ThinkubeSpawner")
    lab = get_path(values, "hub.config.ThinkubeSpawner")
    for name, value in minimal.items():
        if name != "shared_volumes":
            assert lab[name] == value, name


def test_the_lab_serves_job_artifacts_from_the_models_claim_read_only():
    minimal = get_path(overlay_values(VALUES), f"hub.services.{SERVICE}.command")
    values = overlay_values(VALUES, LAB)
    command = get_path(values, f"hub.services.{SERVICE}.command")
    # The minimal file's command, the artifacts settings added (helm replaces lists whole).
    added = [c for c in command if c not in minimal]
    assert [c for c in command if c in minimal] == [c for c in minimal if c in command]
    assert set(minimal) <= set(command)
    options = dict(c.removeprefix("--ThinkubeService.").split("=", 1) for c in added)
    assert set(options) == {"jobs_models_claim", "jobs_artifacts_root", "jobs_datasets_claim"}
    pvcs = [d for _, d in all_manifests(LAB_MANIFESTS) if d["kind"] == "PersistentVolumeClaim"]
    assert options["jobs_models_claim"] in [d["metadata"]["name"] for d in pvcs]
    assert options["jobs_datasets_claim"] in [d["metadata"]["name"] for d in pvcs]
    # The same claim the servers mount at /models, and in the hub pod read-only, where the
    # service is told to read it.
    shared = get_path(values, "hub.config.ThinkubeSpawner.shared_volumes")
    assert {"claim": options["jobs_models_claim"], "mount_path": "/models"} in shared
    (volume,) = [
        v
        for v in get_path(values, "hub.extraVolumes")
        if v["persistentVolumeClaim"]["claimName"] == options["jobs_models_claim"]
    ]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    (mount,) = [m for m in get_path(values, "hub.extraVolumeMounts") if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and mount["mountPath"] == options["jobs_artifacts_root"]
    # The service sees both claims where job pods do (its training path checks default there).
    mounts = {m["name"]: m for m in get_path(values, "hub.extraVolumeMounts")}
    claims = {
        v["persistentVolumeClaim"]["claimName"]: mounts[v["name"]]
        for v in get_path(values, "hub.extraVolumes")
    }
    assert claims[options["jobs_models_claim"]]["mountPath"] == "/models"
    assert claims[options["jobs_datasets_claim"]]["mountPath"] == "/datasets"
    assert {"claim": options["jobs_datasets_claim"], "mount_path": "/datasets"} in shared


def secret_like_values(node, path=""):
    """(path, value) of every string under a key that names a secret, token, password or
    key, anywhere in a values tree; a Secret reference (valueFrom) is a map, not a string."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from secret_like_values(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from secret_like_values(value, f"{path}[{index}]")
    elif isinstance(node, str) and re.search(
        r"(secret|token|password|passwd|api_?key|keys)$", path.rsplit(".", 1)[-1], re.I
    ):
        yield path, node


@pytest.mark.parametrize("path", [VALUES, LAB], ids=["values.yaml", "lab.yaml"])
def test_no_literal_secrets(path):
    assert list(secret_like_values(load_yaml(path))) == []
    text = path.read_text().lower()
    assert not re.search(r"(secret|password|token)\s*:\s*['\"]?[a-z0-9_-]{12,}", text)


def test_the_secret_check_finds_literal_secrets():
    planted = {
        "hub": {
            "services": {SERVICE: {"apiToken": "0123abcd"}},
            "extraEnv": {"OAUTH_CLIENT_SECRET": "s3cr3t"},
            "config": {"GenericOAuthenticator": {"client_secret": "s3cr3t"}},
        }
    }
    assert [p for p, _ in secret_like_values(planted)] == [
        f"hub.services.{SERVICE}.apiToken",
        "hub.extraEnv.OAUTH_CLIENT_SECRET",
        "hub.config.GenericOAuthenticator.client_secret",
    ]


def test_dockerfile_builds_on_the_matching_hub_image(shared_dir):
    dockerfile = (HELM_VALUES / "Dockerfile").read_text()
    version = re.search(r"^ARG Z2JH_VERSION=(\S+)$", dockerfile, re.M).group(1)
    # The fixture is chart 4.x (JupyterHub 5.5): its hub image is k8s-hub:4.<minor>.<patch>.
    assert re.fullmatch(r"4\.\d+\.\d+", version)
    defaults = chart_values(shared_dir)
    assert get_path(defaults, "hub.image.name") == "quay.io/jupyterhub/k8s-hub"
    assert re.search(r"^FROM quay\.io/jupyterhub/k8s-hub:\$\{Z2JH_VERSION\}$", dockerfile, re.M)
    assert re.search(r"pip install .*/tmp/thinkube-hub", dockerfile)
    for install in install_commands():
        assert install["flags"]["--version"] == version


def test_readme_points_at_files_that_exist():
    readme = README.read_text()
    for path in set(
        re.findall(r"(?<![\w./-])((?:helm-values|scripts|notebooks)/[\w./-]+\w)", readme)
    ):
        assert (REPO / path).exists(), path
    for needle in (
        "helm upgrade --install",
        "kubectl apply -f helm-values/manifests/hub-cluster-rbac.yaml",
        "kubectl apply -f helm-values/manifests/lab/storage.yaml",
        "docker build -f helm-values/Dockerfile",
        "curl -X PUT",
        "/api/v1/images/",
        WRITE_SCOPE,
        "runpod",
    ):
        assert needle.lower() in readme.lower(), needle


def yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", markdown, re.M | re.S)


@pytest.mark.parametrize("doc", ["README.md", "manifests/dcgm-exporter.md"])
@pytest.mark.parametrize("overlays", INSTALLS.values(), ids=INSTALLS.keys())
def test_values_snippets_in_the_docs_validate(validator, shared_dir, doc, overlays):
    """The values overlays the docs show (the RunPod one, the DCGM one) are valid on either
    install."""
    schema_keys = set(validator.schema["properties"])
    snippets = [
        overlay
        for overlay in map(yaml.safe_load, yaml_blocks((HELM_VALUES / doc).read_text()))
        if isinstance(overlay, dict) and set(overlay) <= schema_keys
    ]
    assert snippets, f"no values snippet found in {doc}"
    for overlay in snippets:
        values = chart_values(shared_dir, *overlays, overlay)
        assert errors_of(validator, values) == []


def test_user_environment_is_what_the_notebooks_and_scripts_read():
    """Every variable lab.yaml gives user servers is read by a notebook or sync-repo."""
    env = get_path(overlay_values(VALUES, LAB), "singleuser.extraEnv")
    readers = "\n".join(
        path.read_text()
        for path in [*(REPO / "notebooks").glob("*.ipynb"), REPO / "scripts" / "sync-repo.sh"]
    )
    for name in env:
        if name.startswith(("THINKUBE_", "AWS_ENDPOINT")):
            assert name in readers, name
