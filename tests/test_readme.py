"""What the README tells people holds: its hub configuration runs as written, and the Node.js
version it asks for is the one the pinned configurable-http-proxy and its dependencies need."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from jupyterhub.app import JupyterHub
from traitlets.config import PyFileConfigLoader

from thinkube_spawner import ThinkubeSpawner

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_hub_config() -> str:
    """The python block that follows "In `jupyterhub_config.py`"."""
    after = README.split("In `jupyterhub_config.py`", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def load_as_hub_config(text: str, path: Path):
    """Load `text` the way JupyterHub loads `jupyterhub_config.py` (traitlets' loader, with
    `get_config()` in its namespace)."""
    path.write_text(text)
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


@pytest.mark.parametrize("token", [None, "a" * 64])
async def test_the_readme_hub_config_runs_as_written(tmp_path, monkeypatch, token):
    if token:
        monkeypatch.setenv("THINKUBE_SERVICE_TOKEN", token)
    else:
        monkeypatch.delenv("THINKUBE_SERVICE_TOKEN", raising=False)
    config = load_as_hub_config(readme_hub_config(), tmp_path / "jupyterhub_config.py")
    # Every setting is an option of the class it names, of the right type.
    classes = {"JupyterHub": JupyterHub, "ThinkubeSpawner": ThinkubeSpawner}
    assert set(config) <= set(classes), set(config) - set(classes)
    for section, values in config.items():
        options = classes[section].class_traits(config=True)
        assert set(values) <= set(options), (section, set(values) - set(options))
    hub = JupyterHub(config=config)
    assert hub.spawner_class is ThinkubeSpawner
    assert ThinkubeSpawner(config=config, _mock=True).gpu_choices == [0, 1, 2, 4]
    (service,) = hub.services
    assert service["name"] == "thinkube-resources"
    assert service["command"] == [sys.executable, "-m", "hub_service"]
    if token:
        assert service["api_token"] == token
    else:
        assert re.fullmatch(r"[0-9a-f]{64}", service["api_token"])
    # The service may be reached by every user and by its own token.
    roles = {role["name"]: role for role in hub.load_roles}
    assert "access:services!service=thinkube-resources" in roles["user"]["scopes"]
    assert roles["thinkube-resources"]["services"] == ["thinkube-resources"]


# -- Node.js ----------------------------------------------------------------------


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return (*parts, *[0] * (3 - len(parts)))  # type: ignore[return-value]


def satisfies(version: str, npm_range: str) -> bool:
    """Whether `version` is in an npm `engines` range of the forms package-lock.json holds:
    `||` of comparator sets such as `>=20`, `>= 12.0.0`, `^16`, `~1.2`, `*`, `1.2.3`."""
    have = _version(version)
    for alternative in npm_range.split("||"):
        comparators = re.findall(r"(>=|<=|>|<|\^|~|=)?\s*([\d.x*]+)", alternative.strip())
        if all(_compare(have, op, text) for op, text in comparators):
            return True
    return False


def _compare(have: tuple[int, int, int], op: str, text: str) -> bool:
    if text in ("*", "x"):
        return True
    want = _version(text)
    given = len(re.findall(r"\d+", text))
    if op in ("^", "~"):
        # ^1.2 allows up to the next major (0.x: the next minor); ~1.2 up to the next minor.
        if op == "^" and want[0] > 0:
            upper = (want[0] + 1, 0, 0)
        elif op == "~" and given == 1:
            upper = (want[0] + 1, 0, 0)
        else:
            upper = (want[0], want[1] + 1, 0)
        return want <= have < upper
    return {
        ">=": have >= want,
        ">": have > want,
        "<=": have <= want,
        "<": have < want,
    }.get(op, have[:given] == want[:given])


def test_the_engines_range_check():
    assert satisfies("20.0.0", ">= 20") and not satisfies("19.9.0", ">= 20")
    assert satisfies("20.0.0", "^16 || ^18 || >=20") and not satisfies(
        "19.1.0", "^16 || ^18 || >=20"
    )
    assert not satisfies("20.20.2", ">=22.12.0") and satisfies("22.12.0", ">=22.12.0")
    assert satisfies("18.1.0", "~18") and not satisfies("19.0.0", "~18")
    assert satisfies("1.0.0", "*") and satisfies("20.0.0", ">=0.1.90")


def test_the_readme_asks_for_the_node_the_lock_needs():
    claimed = int(re.search(r"Node\.js (\d+)\+", README).group(1))
    lock = json.loads((ROOT / "package-lock.json").read_text())
    engines = {
        name: package["engines"]["node"]
        for name, package in lock["packages"].items()
        if name and isinstance(package.get("engines"), dict) and "node" in package["engines"]
    }
    assert "node_modules/configurable-http-proxy" in engines
    too_new = {name: r for name, r in engines.items() if not satisfies(f"{claimed}.0.0", r)}
    assert too_new == {}, f"these need more than Node.js {claimed}: {too_new}"
    # and no less would do: something in the lock needs that major version
    assert any(not satisfies(f"{claimed - 1}.99.0", r) for r in engines.values())
    package = json.loads((ROOT / "package.json").read_text())
    assert package["engines"]["node"] == f">={claimed}"
    # npm refuses to install on an older Node.js rather than warn.
    assert "engine-strict=true" in (ROOT / ".npmrc").read_text().splitlines()
