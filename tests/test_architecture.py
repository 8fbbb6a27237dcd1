"""The layers of docs/architecture.md, held: who may import whom, what starting the service
loads, and that the spawners touch only kubespawner's and JupyterHub's public surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("thinkube_core", "hub_service", "thinkube_spawner")

# package -> the packages (and heavy libraries) it must never import
FORBIDDEN = {
    "thinkube_core": {"hub_service", "thinkube_spawner", "jupyterhub", "kubespawner", "tornado"},
    "hub_service": {"thinkube_spawner", "kubespawner"},
    "thinkube_spawner": {"hub_service"},
    # what a training job runs in its image: nothing of the hub
    "thinkube_train": {
        "hub_service",
        "thinkube_spawner",
        "thinkube_core",
        "jupyterhub",
        "kubespawner",
        "tornado",
    },
    "tests.kubesim": {"hub_service", "thinkube_spawner", "thinkube_core"},
    "tests.runpod_fake": {"hub_service", "thinkube_spawner", "thinkube_core"},
}


def modules(package: str) -> list[Path]:
    return sorted((REPO / package.replace(".", "/")).rglob("*.py"))


def imported(path: Path, package: str) -> set[str]:
    """Every module this file imports, relative imports resolved, as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = path.relative_to(REPO).with_suffix("").parts
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module or "")
    return names


def offenders(package: str) -> list[str]:
    found = []
    for path in modules(package):
        for name in imported(path, package):
            top = name.split(".")
            for banned in FORBIDDEN[package]:
                if top[: len(banned.split("."))] == banned.split("."):
                    found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_dependencies_flow_one_way(package):
    assert offenders(package) == []


def test_the_import_check_does_find_a_forbidden_import(tmp_path, monkeypatch):
    """The check above can fail: a service module that imports a spawner is found."""
    fake = tmp_path / "hub_service"
    fake.mkdir()
    (fake / "bad.py").write_text("from thinkube_spawner.menu import build_menu\n")
    (fake / "ok.py").write_text("from .state import ClusterState\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert offenders("hub_service") == ["hub_service/bad.py imports thinkube_spawner.menu"]


def test_starting_the_service_loads_no_spawner():
    """`python -X importtime -m hub_service --help`: neither kubespawner nor JupyterHub's
    spawner module is imported (they cost most of a cold start)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hub_service", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "hub_service.app" in loaded or "hub_service" in loaded
    assert not {m for m in loaded if m.startswith(("kubespawner", "thinkube_spawner"))}
    assert "jupyterhub.spawner" not in loaded


# --- kubespawner's and JupyterHub's public surface only -----------------------------------

# The one module allowed to touch a private hook of kubespawner or JupyterHub, were one ever
# needed (docs/architecture.md); today none is.
PRIVATE_HOOKS_MODULE = "thinkube_spawner/private_hooks.py"


def base_private_names() -> set[str]:
    """Private names of JupyterHub's and kubespawner's spawner classes (not the ones
    traitlets gives every configurable class)."""
    from jupyterhub.spawner import LocalProcessSpawner, Spawner
    from kubespawner import KubeSpawner
    from traitlets.config import LoggingConfigurable

    machinery = set(vars(type("Plain", (LoggingConfigurable,), {})))
    return {
        name
        for cls in (Spawner, LocalProcessSpawner, KubeSpawner)
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and name not in machinery
    }


def _is_spawner_class(node: ast.ClassDef) -> bool:
    """A spawner, or a settings mixin for spawners: `self` there is a spawner."""
    names = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
    return any(name.endswith(("Spawner", "Settings")) for name in names)


def private_uses(path: Path, private: set[str]) -> list[str]:
    """`spawner._x`, `self.spawner._x`, and `self._x` in a spawner class, where `_x` is a
    private name of the base classes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    spawner_selves = {
        id(node)
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef) and _is_spawner_class(cls)
        for node in ast.walk(cls)
        if isinstance(node, ast.Name) and node.id == "self"
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in private:
            continue
        owner = node.value
        if (
            (isinstance(owner, ast.Name) and owner.id == "spawner")
            or (isinstance(owner, ast.Attribute) and owner.attr == "spawner")
            or id(owner) in spawner_selves
        ):
            found.append((node.lineno, f"{path.name}:{node.lineno} {node.attr}"))
    return [text for _, text in sorted(found)]


def test_only_public_hooks_of_kubespawner_and_jupyterhub():
    private = base_private_names()
    found = [
        use
        for path in modules("thinkube_spawner")
        if str(path.relative_to(REPO)) != PRIVATE_HOOKS_MODULE
        for use in private_uses(path, private)
    ]
    assert found == []


def test_our_spawners_define_no_name_of_the_base_classes_private_ones():
    """A name of ours that shadows a base class's private attribute breaks it silently
    (`_server` once did): none may."""
    from thinkube_spawner.local import ThinkubeLocalSpawner
    from thinkube_spawner.runpod.spawner import RemoteRunPodSpawner
    from thinkube_spawner.spawner import ThinkubeSpawner

    private = base_private_names()
    ours = {
        name
        for cls in (ThinkubeSpawner, ThinkubeLocalSpawner, RemoteRunPodSpawner)
        for klass in cls.__mro__
        if klass.__module__.startswith("thinkube_spawner")
        for name in vars(klass)
    }
    shadowed = ours & private
    # defaults JupyterHub's and kubespawner's traitlets look up by name are the public way
    # to set a default: `_default_<trait>` methods (by @default) may share a base's name
    assert {n for n in shadowed if not n.startswith("_default_")} == set()


def test_the_private_use_check_finds_a_private_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class S(KubeSpawner):\n    def f(self):\n        self._start_watching_events()\n"
        "        return self.spawner._log_name\n"
        "class Other:\n    def g(self):\n        return self._start()\n"
    )
    assert private_uses(sample, base_private_names()) == [
        "sample.py:3 _start_watching_events",
        "sample.py:4 _log_name",
    ]
