"""scripts/sync-repo.sh against a local "git server": bare repositories under a folder that
THINKUBE_GIT_URL points at (file://), and a home of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sync-repo.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(*args: str, cwd: Path, env: dict) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def lab(tmp_path):
    """A git server with lab/demo.git (one commit), a checkout to push from, and a home."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Lab",
        "GIT_AUTHOR_EMAIL": "lab@example.test",
        "GIT_COMMITTER_NAME": "Lab",
        "GIT_COMMITTER_EMAIL": "lab@example.test",
        "THINKUBE_GIT_URL": (tmp_path / "server").as_uri(),
    }
    bare = tmp_path / "server" / "lab" / "demo.git"
    bare.mkdir(parents=True)
    git("init", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path, env=env)
    work = tmp_path / "work"
    git("clone", str(bare), str(work), cwd=tmp_path, env=env)
    git("checkout", "-b", "main", cwd=work, env=env)
    (work / "intro.ipynb").write_text("{}\n")
    git("add", ".", cwd=work, env=env)
    git("commit", "-m", "first notebook", cwd=work, env=env)
    git("push", "origin", "main", cwd=work, env=env)
    return {"env": env, "home": home, "work": work, "bare": bare}


def sync(lab, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**lab["env"], **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_clones_into_notebooks_then_pulls(lab):
    first = sync(lab, "lab/demo")
    assert first.returncode == 0, first.stderr
    clone = lab["home"] / "notebooks" / "demo"
    assert (clone / "intro.ipynb").exists()
    assert "first notebook" in first.stdout

    # A new commit on the server arrives with the next run.
    work, env = lab["work"], lab["env"]
    (work / "second.ipynb").write_text("{}\n")
    git("add", ".", cwd=work, env=env)
    git("commit", "-m", "second notebook", cwd=work, env=env)
    git("push", "origin", "main", cwd=work, env=env)
    second = sync(lab, "lab/demo")
    assert second.returncode == 0, second.stderr
    assert "Updating" in second.stdout and "second notebook" in second.stdout
    assert (clone / "second.ipynb").exists()


def test_a_full_url_and_another_notebooks_dir(lab, tmp_path):
    target = tmp_path / "elsewhere"
    done = sync(lab, lab["bare"].as_uri(), THINKUBE_NOTEBOOKS_DIR=str(target))
    assert done.returncode == 0, done.stderr
    assert (target / "demo" / "intro.ipynb").exists()


def test_local_changes_are_never_overwritten(lab):
    assert sync(lab, "lab/demo").returncode == 0
    clone = lab["home"] / "notebooks" / "demo"
    (clone / "intro.ipynb").write_text('{"mine": true}\n')
    git("commit", "-am", "my change", cwd=clone, env=lab["env"])
    work, env = lab["work"], lab["env"]
    (work / "intro.ipynb").write_text('{"theirs": true}\n')
    git("commit", "-am", "their change", cwd=work, env=env)
    git("push", "origin", "main", cwd=work, env=env)
    diverged = sync(lab, "lab/demo")
    assert diverged.returncode == 1
    assert "could not update" in diverged.stderr
    assert (clone / "intro.ipynb").read_text() == '{"mine": true}\n'


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "expected exactly one REPO, got 0"),
        (("a/b", "c/d"), "expected exactly one REPO, got 2"),
        (("",), "expected exactly one REPO"),
        (("--force",), "must not start with '-'"),
        (("lab/../etc",), "not a repository name"),
        (("lab demo",), "not a repository name"),
    ],
)
def test_usage_errors(lab, args, message):
    result = sync(lab, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: sync-repo.sh REPO")
    assert message in result.stderr
    assert not (lab["home"] / "notebooks").exists()


def test_help(lab):
    result = sync(lab, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: sync-repo.sh REPO")
    assert "THINKUBE_GIT_URL" in result.stdout


def test_an_unknown_repository(lab):
    result = sync(lab, "lab/missing")
    assert result.returncode == 1
    assert "could not clone" in result.stderr and "lab/missing.git" in result.stderr


def test_a_folder_in_the_way(lab):
    (lab["home"] / "notebooks" / "demo").mkdir(parents=True)
    result = sync(lab, "lab/demo")
    assert result.returncode == 1
    assert "exists and is not a git repository" in result.stderr


def test_the_script_is_executable_and_clean():
    assert os.access(SCRIPT, os.X_OK)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
