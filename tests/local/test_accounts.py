"""People's own accounts when the hub runs as root (thinkube_core/accounts.py, run_as.py):
the account names, the check that an account can run a server's command, and, as root,
real accounts made with useradd and a real process switched to one."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.local.hubproc import REPO_ROOT, delete_accounts, unique_account_prefix
from thinkube_core.accounts import (
    AccountError,
    account_name,
    closed_to_others,
    ensure_account,
)

AS_ROOT = os.geteuid() == 0
VALID = re.compile(r"^[a-z_][a-z0-9_-]*$")


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hub_name, expected",
    [
        ("alice", "jupyter-alice"),
        ("a_b-c9", "jupyter-a_b-c9"),
        # 26 characters with the prefix is where names are cut and given a hash (as TLJH)
        ("abcdefghijklmnopq", "jupyter-abcdefghijklmnopq"),
        ("abcdefghijklmnopqr", "jupyter-abcdefghijklmnopqr-e375e"),
    ],
)
def test_plain_names_keep_their_name_and_long_ones_are_cut_with_a_hash(hub_name, expected):
    assert account_name(hub_name) == expected


@pytest.mark.parametrize(
    "hub_name",
    [
        "alice@example.org",
        "Alice",
        "ève.o'brien+lab@example.com;$(id)",
        "../../etc/passwd",
        "root",
        "-rf",
        "名前",
        "a" * 200,
        "x" + "\udcff",  # a name that is not even valid UTF-8
    ],
)
def test_any_hub_name_gives_a_valid_account_name(hub_name):
    name = account_name(hub_name)
    assert VALID.match(name) and len(name) <= 32, name
    assert name.startswith("jupyter-")
    assert name != "root"


def test_names_that_differ_get_different_accounts():
    names = ["a.b", "a-b", "a_b", "A-b", "a@b", "a" * 40, "a" * 41, "alice", "alicE"]
    accounts = [account_name(n) for n in names]
    assert len(set(accounts)) == len(names), dict(zip(names, accounts, strict=True))


def test_the_prefix_is_checked():
    assert account_name("alice", "lab-") == "lab-alice"
    for bad in ("", "Lab-", "9lab-", "-lab", "lab prefix", "a" * 21):
        with pytest.raises(ValueError, match="a-z, 0-9, _ and - only"):
            account_name("alice", bad)


# --- can an account run the server's command -------------------------------------------------


def test_a_folder_closed_to_others_on_the_way_is_named(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="thinkube-reach-"))
    try:
        shared.chmod(0o755)
        program = shared / "bin" / "tool"
        program.parent.mkdir(mode=0o755)
        program.write_text("#!/bin/sh\necho ok\n")
        program.chmod(0o755)
        assert closed_to_others(str(program)) is None

        program.parent.chmod(0o750)
        assert closed_to_others(str(program)) == (
            f"{program.parent} is closed to other users (mode drwxr-x---)"
        )
        program.parent.chmod(0o755)
        program.chmod(0o700)
        assert closed_to_others(str(program)) == (
            f"{program} is not readable and executable by other users"
        )
        program.chmod(0o755)

        # A script is only as reachable as its interpreter (a venv whose Python is under a
        # closed folder, as pyenv's in /root).
        hidden = tmp_path / "python"  # pytest's tmp_path is closed to others
        hidden.write_text("")
        hidden.chmod(0o755)
        link = shared / "python"
        link.symlink_to(hidden)
        program.write_text(f"#!{link}\n")
        reason = closed_to_others(str(program))
        assert reason.startswith(f"its interpreter {link} (= {hidden}): "), reason
        assert "is closed to other users" in reason
        program.write_text("#!/usr/bin/env python3\n")  # looked up on PATH: not judged
        assert closed_to_others(str(program)) is None
        assert closed_to_others(str(shared / "missing")) == (
            f"{shared / 'missing'}: No such file or directory"
        )
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=True)


# --- real accounts (as root) ------------------------------------------------------------------

as_root = pytest.mark.skipif(not AS_ROOT, reason="makes system accounts: needs root")


def entries(path: str, name: str) -> list[str]:
    with open(path) as f:
        return [line for line in f if line.startswith(name + ":")]


@pytest.fixture
def homes():
    """A home root other accounts can pass through, an account prefix of its own, and
    every account made with it deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="thinkube-homes-"))
    root.chmod(0o755)
    prefix = unique_account_prefix()
    try:
        yield root, prefix
    finally:
        delete_accounts(prefix)
        subprocess.run(["rm", "-rf", str(root)], check=True)


@as_root
async def test_an_account_is_made_once_then_reused(homes):
    root, prefix = homes
    name = account_name("ève@example.org", prefix)
    account, made = await ensure_account(name, str(root), "ève@example.org")
    assert made
    assert account.pw_name == name and account.pw_uid != 0 and account.pw_gid != 0
    assert account.pw_dir == str(root / name) and account.pw_shell == "/bin/bash"
    home = os.stat(account.pw_dir)
    assert (home.st_uid, home.st_mode & 0o777) == (account.pw_uid, 0o700)
    assert pwd.getpwnam(name).pw_gecos == "thinkube hub user ?ve@example.org"
    (entry,) = entries("/etc/shadow", name)
    assert entry.split(":")[1] in ("!", "!!", "*")  # no password: nobody logs in to it

    again, made_again = await ensure_account(name, str(root), "ève@example.org")
    assert (again.pw_uid, made_again) == (account.pw_uid, False)
    assert len(entries("/etc/passwd", name)) == 1

    # Made at the same instant by two spawns: one account.
    twin = account_name("twin", prefix)
    both = await asyncio.gather(*(ensure_account(twin, str(root), "twin") for _ in range(2)))
    assert both[0][0].pw_uid == both[1][0].pw_uid
    assert sorted(made for _, made in both) == [False, True]


@as_root
async def test_a_home_left_by_another_account_is_refused_not_taken_over(homes):
    root, prefix = homes
    name = account_name("carol", prefix)
    (root / name).mkdir()
    os.chown(root / name, 65534, 65534)
    with pytest.raises(AccountError, match=rf"{root / name} belongs to uid 65534, not to"):
        await ensure_account(name, str(root), "carol")


@as_root
def test_run_as_switches_for_good_and_root_cannot_be_regained(homes):
    root, prefix = homes
    account, _ = asyncio.run(ensure_account(account_name("dora", prefix), str(root), "dora"))
    report = (
        "import json, os\n"
        "seen = {'uids': os.getresuid(), 'gids': os.getresgid(), 'groups': os.getgroups(),\n"
        "        'cwd': os.getcwd(), 'home': os.environ['HOME'], 'user': os.environ['USER'],\n"
        "        'status': {k: v.strip() for k, v in (l.split(':', 1) for l in\n"
        "                   open('/proc/self/status')) if k in ('NoNewPrivs', 'CapEff', 'CapPrm')}}\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    seen['setuid0'] = 'worked'\n"
        "except PermissionError:\n"
        "    seen['setuid0'] = 'refused'\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-m", "thinkube_core.run_as", account.pw_name, "--"]
        + ["/usr/bin/python3", "-c", report],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["uids"] == [account.pw_uid] * 3
    assert seen["gids"] == [account.pw_gid] * 3
    assert seen["groups"] == [account.pw_gid]  # root's groups are gone
    assert seen["cwd"] == seen["home"] == account.pw_dir
    assert seen["user"] == account.pw_name
    assert seen["status"] == {"NoNewPrivs": "1", "CapEff": "0" * 16, "CapPrm": "0" * 16}
    assert seen["setuid0"] == "refused"


@as_root
def test_run_as_refuses_root_and_unknown_accounts():
    def run_as(account):
        return subprocess.run(
            [sys.executable, "-I", "-m", "thinkube_core.run_as", account, "--", "id"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )

    done = run_as("root")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        "thinkube: cannot start the server as root: root is uid or gid 0: servers never run as root"
    )
    done = run_as("no-such-account-here")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.strip() == "thinkube: no account 'no-such-account-here' on this machine"
