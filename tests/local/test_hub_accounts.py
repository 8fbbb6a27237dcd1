"""`thinkube hub` started as root: each person's server runs as a system account of their own,
made on their first start and reused after, never as root. What the server runs as is read
from inside it, in a terminal of the server (jupyter-server's terminal API, as JupyterLab's
terminal does), and from the process itself."""

from __future__ import annotations

import os
import re
from urllib.parse import urljoin

import pytest

from tests.e2e.test_thinkube_spawner import form_fields
from tests.local.hubproc import local_hub, option, run_in_terminal, server_processes
from thinkube_core.accounts import account_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hub makes accounts only as root")

WHO = (
    "id -u; id -g; id -G; pwd; echo $HOME $USER $SHELL; "
    "grep -E '^(NoNewPrivs|CapEff):' /proc/self/status; "
    "python3 -c 'import os; os.setuid(0)' 2>&1 | tail -n 1"
)


async def start_server(hub, user: str):
    browser = await hub.login(user)
    html = await hub.form(browser)
    fields = {**form_fields(html), option("cpu"): "1", option("memory"): "2"}
    response = await browser.post(
        urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(browser)}
    )
    assert response.status_code == 200, response.text[-1500:]
    await hub.server(browser, user)
    return browser


def made_lines(hub, user: str) -> list[str]:
    return [
        line
        for line in hub.output
        if f"Made the system account {hub.account(user).pw_name}" in line
    ]


async def test_each_person_runs_as_their_own_account_never_root(tmp_path):
    async with local_hub(tmp_path / "hub") as hub:
        alice = await start_server(hub, "alice")
        account = hub.account("alice")
        assert account.pw_name == f"{hub.account_prefix}alice"
        assert account.pw_uid != 0 and account.pw_gid != 0

        # Inside the server: a shell of the server runs as alice's account, in its home,
        # with no way back to root.
        lines = (await run_in_terminal(hub, alice, "alice", WHO)).split("\n")
        lines = [line.strip() for line in lines if line.strip()]
        assert lines[:5] == [
            str(account.pw_uid),
            str(account.pw_gid),
            str(account.pw_gid),  # its own group only: none of root's
            account.pw_dir,
            f"{account.pw_dir} {account.pw_name} /bin/bash",
        ], lines
        assert lines[5:7] == ["CapEff:\t0000000000000000", "NoNewPrivs:\t1"], lines
        assert lines[7] == "PermissionError: [Errno 1] Operation not permitted", lines

        # The server process itself: real, effective and saved ids all the account's.
        (process,) = server_processes(hub, "alice")
        assert list(process.uids()) == [account.pw_uid] * 3
        assert list(process.gids()) == [account.pw_gid] * 3
        assert process.cwd() == account.pw_dir
        environ = process.environ()
        assert (environ["HOME"], environ["USER"]) == (account.pw_dir, account.pw_name)
        # A file the server writes is the account's (through the server's contents API).
        token = (await hub.api(alice, "POST", "users/alice/tokens", json={})).json()["token"]
        saved = await alice.put(
            urljoin(hub.url, "user/alice/api/contents/from-the-server.txt"),
            json={"type": "file", "format": "text", "content": "mine"},
            headers={"Authorization": f"token {token}"},
        )
        assert saved.status_code == 201, saved.text[:300]
        written = os.stat(os.path.join(account.pw_dir, "from-the-server.txt"))
        assert (written.st_uid, written.st_gid) == (account.pw_uid, account.pw_gid)

        # Stopped and started again: the same account, made only the first time, with the
        # file still there.
        await hub.stop_server(alice, "alice")
        alice = await start_server(hub, "alice")
        again = hub.account("alice")
        assert (again.pw_uid, again.pw_dir) == (account.pw_uid, account.pw_dir)
        assert len(made_lines(hub, "alice")) == 1
        (process,) = server_processes(hub, "alice")
        assert process.uids().effective == account.pw_uid
        assert os.stat(os.path.join(account.pw_dir, "from-the-server.txt")).st_size == 4

        # A second person: another account, another uid.
        await start_server(hub, "bob")
        bob = hub.account("bob")
        assert bob.pw_name == f"{hub.account_prefix}bob"
        assert bob.pw_uid not in (0, account.pw_uid)
        (process,) = server_processes(hub, "bob")
        assert process.uids().effective == bob.pw_uid
        assert process.cwd() == bob.pw_dir


async def test_hostile_and_long_names_get_valid_accounts(tmp_path):
    names = ["ève.o'brien+lab@example.com;$(id)", "a-very-long-name-" * 4]
    async with local_hub(tmp_path / "hub") as hub:
        for user in names:
            await start_server(hub, user)
            account = hub.account(user)
            assert account.pw_name == account_name(user, hub.account_prefix)
            assert re.fullmatch(r"[a-z_][a-z0-9_-]*", account.pw_name), account.pw_name
            assert len(account.pw_name) <= 32
            (process,) = server_processes(hub, user)
            assert process.uids().effective == account.pw_uid != 0
        assert hub.account(names[0]).pw_uid != hub.account(names[1]).pw_uid
