"""A system account of their own for each hub user, when the hub (or the service, for jobs)
runs as root.

As The Littlest JupyterHub does, a hub user `alice` gets the account `jupyter-alice`, made on
their first spawn with `useradd` (its own group, a home, /bin/bash, no password: nobody logs
in to it, the hub starts servers as it) and reused after. Hub user names may hold anything
(e-mail addresses from OAuth, capitals, Unicode); account names may not, so `account_name`
maps every name to a valid one, distinct names to distinct accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import threading
from pathlib import Path

DEFAULT_PREFIX = "jupyter-"
# useradd's own limit is 32 characters; like TLJH, names that reach 26 are cut there and
# given 5 characters of a hash (26 + "-" + 5 = 32).
CUT_AT = 26
ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
PREFIX = re.compile(r"^[a-z_][a-z0-9_-]{0,19}$")


class AccountError(Exception):
    """An account could not be made or used; the message says which and why."""


def account_name(hub_name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The system account for a hub user: `prefix` + the name, lower case, with anything
    but a-z, 0-9, `_` and `-` turned into `-`. A name that had to change, or that reaches
    26 characters, is cut at 26 and ends with 5 characters of the hash of prefix + name
    (TLJH's rule for long names), so that `a.b` and `a-b` get different accounts and every
    account name fits useradd's 32."""
    if not PREFIX.match(prefix):
        raise ValueError(f"account prefix {prefix!r}: a-z, 0-9, _ and - only, 20 at most")
    plain = prefix + re.sub(r"[^a-z0-9_-]", "-", hub_name.lower())
    if plain == prefix + hub_name and len(plain) < CUT_AT:
        return plain
    digest = hashlib.sha256((prefix + hub_name).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{plain[:CUT_AT]}-{digest[:5]}"


def closed_to_others(path: str) -> str | None:
    """Why an account other than the file's owner could not run `path` (a directory on
    the way without search permission for others, or the file not readable and executable
    by them; for a script, the same of its interpreter), or None when it can. Symbolic
    links are followed; group and ACL grants are not counted, as a new account belongs to
    no group but its own."""
    target = Path(os.path.realpath(path))
    for folder in reversed(target.parents):
        try:
            mode = folder.stat().st_mode
        except OSError as err:
            return f"{folder}: {err.strerror}"
        if not mode & stat.S_IXOTH:
            return f"{folder} is closed to other users (mode {stat.filemode(mode)})"
    try:
        mode = target.stat().st_mode
        with open(target, "rb") as f:
            head = f.readline(256)
    except OSError as err:
        return f"{target}: {err.strerror}"
    if (mode & (stat.S_IROTH | stat.S_IXOTH)) != (stat.S_IROTH | stat.S_IXOTH):
        return f"{target} is not readable and executable by other users"
    interpreter = _interpreter(head)
    if interpreter:
        closed = closed_to_others(interpreter)
        if closed:
            real = os.path.realpath(interpreter)
            named = interpreter if real == interpreter else f"{interpreter} (= {real})"
            return f"its interpreter {named}: {closed}"
    return None


def _interpreter(first_line: bytes) -> str | None:
    """The interpreter a script's `#!` line names (None for `/usr/bin/env ...`, which
    looks it up on PATH, and for anything that is not a script)."""
    if not first_line.startswith(b"#!"):
        return None
    words = first_line[2:].decode(errors="replace").split()
    if not words or not words[0].startswith("/") or os.path.basename(words[0]) == "env":
        return None
    return words[0]


def existing_account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def usable(account: pwd.struct_passwd) -> pwd.struct_passwd:
    """The account, if a server may run as it: never root's uid or group."""
    if account.pw_uid == 0 or account.pw_gid == 0:
        raise AccountError(
            f"the account {account.pw_name} has uid {account.pw_uid} and gid "
            f"{account.pw_gid}: servers never run as root"
        )
    return account


def useradd_command(name: str, home: str, comment: str) -> list[str]:
    return [
        shutil.which("useradd") or "useradd",
        "--create-home",
        "--home-dir",
        home,
        "--user-group",
        "--shell",
        "/bin/bash",
        "--comment",
        comment,
        name,
    ]


# useradd's own locking does not keep two at once from tripping over each other: every
# account is made under this process's lock and, across hubs, a lock file only root may
# create (/run is root's).
_making = threading.Lock()
MAKING_LOCK_FILE = "/run/thinkube-accounts.lock"


@contextlib.contextmanager
def _one_at_a_time():
    with _making:
        try:
            fd = os.open(MAKING_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield  # no /run to write: this process's lock alone
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _make_account(name: str, home: str, comment: str) -> tuple[pwd.struct_passwd, bool]:
    with _one_at_a_time():
        found = existing_account(name)
        if found is not None:
            return found, False
        done = subprocess.run(
            useradd_command(name, home, comment), capture_output=True, text=True, check=False
        )
        found = existing_account(name)
        if found is None:
            reason = done.stderr.strip().splitlines()
            raise AccountError(
                f"useradd could not make the account {name}: "
                f"{reason[-1] if reason else f'exit status {done.returncode}'}"
            )
        return found, True


async def ensure_account(
    name: str, home_root: str, hub_name: str
) -> tuple[pwd.struct_passwd, bool]:
    """The account `name`, and whether it was made now: made with useradd (home
    `home_root`/`name`, mode 0700) unless it exists."""
    if not ACCOUNT_NAME.match(name) or len(name) > 32:
        raise AccountError(f"{name!r} is not a valid account name")
    found = existing_account(name)
    if found is not None:
        return usable(found), False
    if shutil.which("useradd") is None:
        raise AccountError("useradd is not installed (Debian and Ubuntu: the passwd package)")
    # The comment is only a label; keep it to characters every passwd file accepts.
    label = re.sub(r"[^A-Za-z0-9 @._-]", "?", hub_name)[:64]
    found, made = await asyncio.to_thread(
        _make_account, name, os.path.join(home_root, name), f"thinkube hub user {label}"
    )
    usable(found)
    if not made:
        return found, False
    try:
        home_owner = os.stat(found.pw_dir).st_uid
    except OSError as err:
        raise AccountError(f"the home of {name}, {found.pw_dir}: {err.strerror}") from None
    if home_owner != found.pw_uid:  # a folder left by an earlier account of that name
        raise AccountError(
            f"{found.pw_dir} belongs to uid {home_owner}, not to the new account {name} "
            f"(uid {found.pw_uid}): move it away or give it to {name}"
        )
    os.chmod(found.pw_dir, 0o700)  # people's files are their own
    return found, True


async def person_account(
    hub_name: str, system_users: bool, prefix: str = DEFAULT_PREFIX, home_root: str = "/home"
) -> tuple[pwd.struct_passwd, bool]:
    """The account a person's servers and jobs run as when the hub (or the service) runs as
    root, and whether it was made now: with `system_users`, the existing system user of the
    same name; otherwise `prefix` + their name, made on first use."""
    if system_users:
        found = existing_account(hub_name)
        if found is None:
            raise AccountError(f"there is no system user {hub_name!r}")
        return usable(found), False
    return await ensure_account(account_name(hub_name, prefix), home_root, hub_name)


def folder_closed_to_others(folder: str) -> str | None:
    """Why an account other than the owner could not reach `folder` (a folder on the way,
    or the folder itself, without search permission for others), or None when it can."""
    target = Path(os.path.realpath(folder))
    for step in [*reversed(target.parents), target]:
        try:
            mode = step.stat().st_mode
        except OSError as err:
            return f"{step}: {err.strerror}"
        if not mode & stat.S_IXOTH:
            return f"{step} is closed to other users (mode {stat.filemode(mode)})"
    return None
