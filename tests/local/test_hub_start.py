"""How `thinkube hub` starts, seen from outside as a person would: the login page from the
moment its port opens (never a 404), the banner with the address and password printed
last and only once the page answers, the warning for plain HTTP beyond loopback, HTTPS
with --ssl-cert/--ssl-key, and one hub per data directory."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import ssl
import time

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kubesim.sim import free_port
from tests.local.hubproc import PASSWORD_LINE, LocalHub, _collect, local_hub, start_hub
from tests.local.test_hub_command import _run_cli
from tests.utils import eventually, stop_process_group
from thinkube_spawner.hub import banner_lines, is_loopback

TLS_OPTIONS = "--ssl-cert CERT --ssl-key KEY"


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "thinkube test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def banner_index(output: list[str]) -> int | None:
    return next((i for i, line in enumerate(output) if PASSWORD_LINE.search(line)), None)


def banner(output: list[str]) -> list[str]:
    """The banner's lines: from "data in ..." to the address and password."""
    end = banner_index(output)
    start = max(
        i for i, line in enumerate(output[:end]) if line.startswith("thinkube hub: data in ")
    )
    return [line.rstrip("\n") for line in output[start : end + 1]]


async def test_the_login_page_never_404s_and_the_banner_comes_last_once_it_answers(tmp_path):
    port = free_port()
    process = await start_hub("--port", str(port), "--data-dir", str(tmp_path / "hub"))
    output: list[str] = []
    reader = asyncio.ensure_future(_collect(process, output))
    answers = []  # (status or "closed", was the banner already printed)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 150
            # From before the port opens until the page first answers 200.
            while time.monotonic() < deadline and process.returncode is None:
                try:
                    status = (await http.get(f"http://127.0.0.1:{port}/hub/login")).status_code
                except httpx.TransportError:
                    status = "closed"
                answers.append((status, banner_index(output) is not None))
                if status == 200:
                    break
                await asyncio.sleep(0.02)
        statuses = [status for status, _ in answers]
        assert statuses[-1] == 200, "".join(output)[-3000:]
        assert 404 not in statuses, statuses
        # Before the hub listens behind it the proxy can only say 503 (for a moment), and
        # before that the port is closed; nothing else.
        assert set(statuses) <= {"closed", 503, 200}, statuses
        assert not any(printed for _, printed in answers[:-1]), ("banner too early", answers)

        async def printed():
            return banner_index(output) is not None

        await eventually(printed, within=150)
        await asyncio.sleep(3)  # nothing the hub does at start comes after the banner
        lines = banner(output)
        # The last lines.
        assert output[-len(lines) :] == [line + "\n" for line in lines], output[-12:]
        assert len(lines) == 3, lines  # loopback: no warning
        assert "Ctrl-C stops the hub and every server it started" in lines[0]
        assert f"open http://127.0.0.1:{port}/ and" in lines[-1]
        password = PASSWORD_LINE.search(lines[-1]).group(1)
        assert sum(password in line for line in output) == 1  # printed once, never logged

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        await stop_process_group(process)
        reader.cancel()


async def test_listening_beyond_loopback_over_plain_http_warns_in_the_banner(tmp_path):
    async with local_hub(tmp_path / "hub", args=("--ip", "0.0.0.0")) as hub:
        lines = banner(hub.output)
        assert lines[-2] == (
            "thinkube hub: WARNING: listening on 0.0.0.0 over plain HTTP: the password, "
            "cookies and notebooks cross the network unencrypted. Serve HTTPS with "
            f"{TLS_OPTIONS}, or listen on 127.0.0.1 behind a TLS proxy."
        )
        # All addresses: the address to give people is the machine's name.
        assert f"open http://{hub.settings['hostname']}:{hub.settings['port']}/ and" in lines[-1]


async def test_with_a_certificate_it_serves_https_and_does_not_warn(tmp_path):
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    port = free_port()
    args = ("--ip", "0.0.0.0", "--ssl-cert", cert, "--ssl-key", key)
    async with local_hub(tmp_path / "hub", port=port, args=args) as hub:
        lines = banner(hub.output)
        assert not any("WARNING" in line for line in lines), lines
        assert f"open https://{hub.settings['hostname']}:{port}/ and" in lines[-1]

        tls_hub = LocalHub(
            f"https://127.0.0.1:{port}/",
            hub.data_dir,
            hub.process,
            hub.password,
            hub.output,
            hub.account_prefix,
            verify=trust,
        )
        alice = await tls_hub.login("alice")  # the certificate checks out, and login works
        assert all(c.secure for c in alice.cookies.jar if c.name.startswith("jupyterhub"))
        await alice.aclose()
        async with httpx.AsyncClient(timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):
                (await plain.get(f"http://127.0.0.1:{port}/hub/login")).raise_for_status()

        # A second hub on the same data directory is refused, not mixed in.
        second = await asyncio.to_thread(
            _run_cli, "--port", str(free_port()), "--data-dir", str(hub.data_dir)
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"thinkube: error: another thinkube hub is running with the data directory "
            f"{hub.data_dir}: stop it, or give this one its own --data-dir"
        )


def test_tls_options_are_checked_before_anything_starts(tmp_path):
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    data = tmp_path / "d"
    cases = [
        (("--ssl-cert", cert), "--ssl-cert and --ssl-key go together: give both"),
        (("--ssl-key", key), "--ssl-cert and --ssl-key go together: give both"),
        (
            ("--ssl-cert", str(tmp_path / "none.pem"), "--ssl-key", key),
            f"--ssl-cert {tmp_path / 'none.pem'}: no such file",
        ),
        (
            ("--ssl-cert", cert, "--ssl-key", other_key),
            f"--ssl-cert {cert} and --ssl-key {other_key} do not load together (KEY_VALUES_MISMATCH): "
            "give a PEM certificate and its own private key",
        ),
        (
            ("--ssl-cert", key, "--ssl-key", key),
            f"--ssl-cert {key} and --ssl-key {key} do not load together",
        ),
    ]
    for args, message in cases:
        result = _run_cli(*args, "--data-dir", str(data))
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith(f"thinkube: error: {message}"), (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not data.exists()  # nothing created


@pytest.mark.parametrize(
    "ip, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("gpu-box", False)],
)  # fmt: skip
def test_what_counts_as_loopback(ip, loopback):
    assert is_loopback(ip) is loopback


def test_the_banner_says_who_servers_run_as_and_ends_with_address_and_password():
    base = {"ip": "127.0.0.1", "port": 8000, "data_dir": "/d", "hostname": "box"}
    shared_account = banner_lines({**base, "server_accounts": False, "hub_user": "ann"}, "pw")
    assert shared_account == [
        "thinkube hub: data in /d; Ctrl-C stops the hub and every server it started.",
        "thinkube hub: every server runs as ann, the hub's own account: people who log in "
        "can read each other's files.",
        "thinkube hub: open http://127.0.0.1:8000/ and log in with any user name and the "
        "password: pw",
    ]
    own = banner_lines({**base, "server_accounts": True, "account_prefix": "lab-"}, "pw")
    assert own[1] == (
        "thinkube hub: each person's server runs as a system account of their own "
        "(lab-<name>, made at their first start)."
    )
    system = banner_lines({**base, "server_accounts": True, "system_users": True}, "pw")
    assert system[1] == (
        "thinkube hub: each person's server runs as their own system user (system_users)."
    )
    tls_everywhere = banner_lines({**base, "ip": "::", "ssl_cert": "/c.pem"}, "pw")
    assert tls_everywhere[-1].startswith("thinkube hub: open https://box:8000/ and")
    assert not any("WARNING" in line for line in tls_everywhere)
    ipv6 = banner_lines({**base, "ip": "fd00::5"}, "pw")
    assert ipv6[-2].startswith("thinkube hub: WARNING: listening on fd00::5 over plain HTTP")
    assert ipv6[-1].startswith("thinkube hub: open http://[fd00::5]:8000/ and")
