"""Start a server's or a job's command as its account: the last step before the command.

    python -I -m thinkube_core.run_as ACCOUNT -- CMD...

Run as root, after what needs root (the systemd scope, the GPU isolation namespace), this
takes the account's uid and gid (real, effective and saved), its own supplementary groups
in place of root's, sets "no new privileges" (so no setuid program such as sudo or su
gives root back), and starts CMD in the account's home with HOME, USER, LOGNAME and SHELL
set from it. The account may not be uid or gid 0.

Standalone on purpose: it imports nothing from the package it belongs to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import sys

PR_SET_NO_NEW_PRIVS = 38


def become(account: pwd.struct_passwd) -> None:
    """Switch this process to `account` for good; raises OSError if any step fails."""
    if account.pw_uid == 0 or account.pw_gid == 0:
        raise PermissionError(f"{account.pw_name} is uid or gid 0: servers never run as root")
    os.initgroups(account.pw_name, account.pw_gid)
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "setting no_new_privs")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PermissionError("root could be regained after the switch")  # never expected


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        print("usage: python -I -m thinkube_core.run_as ACCOUNT -- CMD...", file=sys.stderr)
        return 2
    name, command = args[0], args[2:]
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        print(f"thinkube: no account {name!r} on this machine", file=sys.stderr)
        return 1
    try:
        become(account)
    except OSError as err:
        print(f"thinkube: cannot start the server as {name}: {err}", file=sys.stderr)
        return 1
    os.environ.update(
        HOME=account.pw_dir, USER=name, LOGNAME=name, SHELL=account.pw_shell or "/bin/sh"
    )
    try:
        os.chdir(account.pw_dir)
    except OSError as err:
        print(f"thinkube: {name} cannot use its home {account.pw_dir}: {err.strerror}",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(
            f"thinkube: {name} cannot run {command[0]}: {err.strerror} (servers run as their "
            "own accounts, so the environment must be readable by other users)",
            file=sys.stderr,
        )
        return 127


if __name__ == "__main__":
    sys.exit(main())
