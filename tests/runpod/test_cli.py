"""`thinkube cloud ...` against the stand-in. Commands run through `main()` in a worker
thread (the stand-in serves on the test's event loop meanwhile), and as real processes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.runpod.conftest import client_for
from thinkube_core.runpod import PodRequest
from thinkube_spawner.cli import main

ROOT = Path(__file__).resolve().parents[2]
# Colab options for tests: quick polls, and never a wait that outlives the test.
FAST = ["--poll-interval", "0.2", "--timeout", "60"]


async def thinkube(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def status_of(url: str, **params) -> int:
    async with httpx.AsyncClient(timeout=10) as http:  # fresh: no Jupyter login cookie
        return (await http.get(url, params=params)).status_code


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def make_pods(fake, *specs):
    async with client_for(fake) as client:
        return [
            await client.create_pod(
                PodRequest(
                    name=name,
                    image_name="img",
                    gpu_type_id="NVIDIA RTX A5000",
                    env={"JUPYTER_PASSWORD": "secret-password-1"},
                    meta=meta,
                )
            )
            for name, meta in specs
        ]


# -- the parser -------------------------------------------------------------------


def test_help_lists_the_cloud_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["cloud", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("offers", "colab", "ls", "rm"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_bad_metadata_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["cloud", "ls", "--meta", "novalue"])
    assert exited.value.code == 2
    assert "metadata 'novalue' must be key=value" in capsys.readouterr().err


# -- offers -----------------------------------------------------------------------


async def test_offers_table(cloud_env, capsys):
    code, out, err = await thinkube(
        capsys, "cloud", "offers", "--min-vram", "24", "--max-price", "0.3"
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "GPU        VRAM   CLOUD      ON DEMAND/H  SPOT/H  STOCK  GPU TYPE ID",
        "RTX 3090   24 GB  community  $0.22        $0.12   high   NVIDIA GeForce RTX 3090",
        "RTX A5000  24 GB  community  $0.22        $0.11   high   NVIDIA RTX A5000",
        "RTX A5000  24 GB  secure     $0.29        $0.15   high   NVIDIA RTX A5000",
    ]


async def test_offers_json_spot_and_gpu_name(cloud_env, capsys):
    code, out, _ = await thinkube(capsys, "cloud", "offers", "--gpu", "a100", "--spot", "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "gpu_type_id": "NVIDIA A100 80GB PCIe",
            "display_name": "A100 PCIe",
            "vram_gb": 80,
            "cloud_type": "COMMUNITY",
            "price_per_hour": 1.19,
            "spot_price_per_hour": 0.6,
            "stock": "High",
            "gpu_count": 1,
        },
        {
            "gpu_type_id": "NVIDIA A100 80GB PCIe",
            "display_name": "A100 PCIe",
            "vram_gb": 80,
            "cloud_type": "SECURE",
            "price_per_hour": 1.64,
            "spot_price_per_hour": 0.82,
            "stock": "High",
            "gpu_count": 1,
        },
    ]


async def test_offers_none_match(cloud_env, capsys):
    code, out, _ = await thinkube(
        capsys, "cloud", "offers", "--max-price", "0.01", "--cloud", "secure"
    )
    assert (code, out) == (0, "No cloud GPU offers match (at most $0.01/h, secure cloud).\n")
    code, out, _ = await thinkube(capsys, "cloud", "offers", "--max-price", "0.01", "--json")
    assert (code, json.loads(out)) == (0, [])


# -- colab ------------------------------------------------------------------------


async def test_colab_prints_urls_whose_token_opens_the_real_jupyter(runpod_fake, cloud_env, capsys):
    code, out, err = await thinkube(
        capsys,
        "cloud",
        "colab",
        "--min-vram",
        "24",
        "--max-price",
        "0.3",
        "--meta",
        "project=demo",
        *FAST,
    )
    assert code == 0, err
    (pod,) = runpod_fake.pods.values()
    lines = out.splitlines()
    assert lines[0] == f"Jupyter is ready on pod {pod.id} (RTX 3090, $0.22/h on demand)."
    jupyter_url = re.search(r"In a browser:\s+(\S+)", out).group(1)
    base, token = re.fullmatch(
        r"(http://127\.\d+\.\d+\.\d+:8888)/\?token=([\w-]+)", jupyter_url
    ).groups()
    assert base == runpod_fake.proxy_url(pod.id, 8888)
    assert len(token) == 32  # secrets.token_urlsafe(24)
    # The token opens the real Jupyter; nothing else does.
    assert await status_of(f"{base}/api/status", token=token) == 200
    assert await status_of(f"{base}/api/status") == 403
    ssh_port = pod.container.public_ports[22]
    assert re.search(r"SSH tunnel:\s+(.+)", out).group(1) == (
        f"ssh -p {ssh_port} root@127.0.0.1 -L 8888:localhost:8888"
    )
    assert re.search(r"Colab:\s+(\S+)", out).group(1) == f"http://localhost:8888/?token={token}"
    # RunPod's own deadline, 12 hours by default, sent and shown.
    deadline = datetime.fromisoformat(pod.input["terminateAfter"])
    assert abs(deadline - (datetime.now(UTC) + timedelta(hours=12))) < timedelta(minutes=1)
    assert lines[-2:] == [
        f"RunPod terminates it at {deadline:%Y-%m-%d %H:%M} UTC (--max-hours 12); it is billed "
        "until then,",
        f"or until you remove it:  thinkube cloud rm {pod.id}",
    ]
    assert f"RunPod terminates it at {deadline:%Y-%m-%d %H:%M} UTC; waiting" in err
    # What was asked of RunPod.
    assert pod.input["startJupyter"] is True
    assert (pod.input["gpuTypeId"], pod.input["cloudType"]) == (
        "NVIDIA GeForce RTX 3090",
        "COMMUNITY",
    )
    assert pod.input["ports"] == "8888/http,22/tcp"
    assert pod.env["JUPYTER_PASSWORD"] == token
    assert (pod.env["THINKUBE_PURPOSE"], pod.env["THINKUBE_PROJECT"]) == ("colab", "demo")
    assert re.fullmatch(r"thinkube-colab-[0-9a-f]{6}", pod.name)
    assert err.splitlines()[0] == (
        "Trying RTX 3090 24 GB, $0.22/h on demand, $0.12/h spot, stock high (community cloud)"
    )

    code, out, _ = await thinkube(capsys, "cloud", "rm", "--meta", "project=demo", "--yes")
    assert (code, out) == (0, f"terminated {pod.id}\n")
    assert runpod_fake.pods == {}
    assert pod.last_process.returncode is not None


async def test_colab_json_spot(runpod_fake, cloud_env, capsys):
    code, out, err = await thinkube(
        capsys, "cloud", "colab", "--gpu", "4090", "--spot", "--json", "--max-hours", "2", *FAST
    )
    assert code == 0, err
    result = json.loads(out)
    pod = runpod_fake.pod(result["pod_id"])
    assert (pod.pod_type, pod.input["bidPerGpu"], pod.cost_per_hr) == ("INTERRUPTABLE", 0.2, 0.2)
    assert pod.input["terminateAfter"].endswith("Z")  # the dead-man switch from --max-hours
    deadline = datetime.fromisoformat(pod.input["terminateAfter"])
    assert abs(deadline - (datetime.now(UTC) + timedelta(hours=2))) < timedelta(minutes=1)
    assert datetime.fromisoformat(result.pop("terminate_after")) == deadline
    token = pod.env["JUPYTER_PASSWORD"]
    assert result == {
        "pod_id": pod.id,
        "name": pod.name,
        "gpu": "RTX 4090",
        "gpu_type_id": "NVIDIA GeForce RTX 4090",
        "gpu_count": 1,
        "cloud_type": "COMMUNITY",
        "spot": True,
        "price_per_hour": 0.2,
        "jupyter_url": f"{runpod_fake.proxy_url(pod.id, 8888)}/?token={token}",
        "ssh_command": f"ssh -p {pod.container.public_ports[22]} root@127.0.0.1 -L 8888:localhost:8888",
        "colab_url": f"http://localhost:8888/?token={token}",
        "meta": {"purpose": "colab"},
    }
    assert await status_of(f"{runpod_fake.proxy_url(pod.id, 8888)}/api/status", token=token) == 200


async def test_colab_without_a_time_limit_only_when_asked(runpod_fake, cloud_env, capsys):
    code, out, err = await thinkube(capsys, "cloud", "colab", "--max-hours", "0", *FAST)
    assert code == 0, err
    (pod,) = runpod_fake.pods.values()
    assert "terminateAfter" not in pod.input
    assert pod.terminate_at is None
    assert out.splitlines()[-2:] == [
        "The pod has no time limit (--max-hours 0).",
        f"It is billed until you remove it:  thinkube cloud rm {pod.id}",
    ]
    assert "no time limit (--max-hours 0); waiting" in err
    code, out, _ = await thinkube(capsys, "cloud", "colab", "--max-hours", "0", "--json", *FAST)
    assert (code, json.loads(out)["terminate_after"]) == (0, None)


async def test_colab_skips_offers_out_of_stock(runpod_fake, cloud_env, capsys):
    runpod_fake.set_capacity("NVIDIA GeForce RTX 3090", 0, "COMMUNITY")
    code, _, err = await thinkube(
        capsys, "cloud", "colab", "--gpu", "3090", "--attempts", "1", *FAST
    )
    assert code == 0, err
    assert err.splitlines()[:2] == [
        "Skipping RTX 3090 (community cloud, $0.22/h): RunPod reports it out of stock",
        "Trying RTX 3090 24 GB, $0.46/h on demand, $0.23/h spot, stock high (secure cloud)",
    ]
    # The one attempt went to the offer in stock.
    (deploy,) = runpod_fake.requests_for("podFindAndDeployOnDemand")
    assert deploy.variables["input"]["cloudType"] == "SECURE"
    (pod,) = runpod_fake.pods.values()
    assert (pod.gpu_type.id, pod.cloud_type) == ("NVIDIA GeForce RTX 3090", "SECURE")


async def test_colab_when_every_offer_is_out_of_stock(runpod_fake, cloud_env, capsys):
    runpod_fake.set_capacity("NVIDIA GeForce RTX 4090", 0)
    code, out, err = await thinkube(capsys, "cloud", "colab", "--gpu", "4090", "--spot", *FAST)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "Skipping RTX 4090 (community cloud, $0.20/h): RunPod reports it out of stock",
        "Skipping RTX 4090 (secure cloud, $0.35/h): RunPod reports it out of stock",
        "thinkube: error: every matching cloud GPU offer is out of stock (GPU name containing "
        "'4090', spot); try again later or wider filters",
    ]
    assert runpod_fake.requests_for("podRentInterruptable") == []
    code, out, _ = await thinkube(capsys, "cloud", "offers", "--gpu", "4090")
    assert out.splitlines() == [
        "GPU       VRAM   CLOUD      ON DEMAND/H  SPOT/H  STOCK  GPU TYPE ID",
        "RTX 4090  24 GB  community  $0.34        $0.20   none   NVIDIA GeForce RTX 4090",
        "RTX 4090  24 GB  secure     $0.69        $0.35   none   NVIDIA GeForce RTX 4090",
    ]


async def test_colab_moves_to_the_next_offer_on_no_capacity(runpod_fake, cloud_env, capsys):
    runpod_fake.inject(error="capacity", field="podFindAndDeployOnDemand")
    code, _, err = await thinkube(
        capsys, "cloud", "colab", "--min-vram", "24", "--max-price", "0.3", *FAST
    )
    assert code == 0, err
    assert err.splitlines()[:3] == [
        "Trying RTX 3090 24 GB, $0.22/h on demand, $0.12/h spot, stock high (community cloud)",
        "  no capacity for it right now; trying the next offer",
        "Trying RTX A5000 24 GB, $0.22/h on demand, $0.11/h spot, stock high (community cloud)",
    ]
    (pod,) = runpod_fake.pods.values()
    assert pod.gpu_type.id == "NVIDIA RTX A5000"


async def test_colab_gives_up_when_no_offer_has_capacity(runpod_fake, cloud_env, capsys):
    runpod_fake.inject(error="capacity", field="podFindAndDeployOnDemand", times=-1)
    code, out, err = await thinkube(capsys, "cloud", "colab", "--attempts", "2", *FAST)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        "thinkube: error: none of the 2 cheapest matching offer(s) had capacity; "
        "try again later, --attempts more, or wider filters"
    )
    assert len(runpod_fake.requests_for("podFindAndDeployOnDemand")) == 2
    assert runpod_fake.pods == {}


async def test_colab_with_no_matching_offer(runpod_fake, cloud_env, capsys):
    code, _, err = await thinkube(capsys, "cloud", "colab", "--min-vram", "200", *FAST)
    assert (code, err) == (1, "thinkube: error: no cloud GPU offer matches (at least 200 GB)\n")
    assert runpod_fake.requests_for("podFindAndDeployOnDemand") == []


async def test_colab_terminates_the_pod_when_it_dies_while_starting(runpod_fake, cloud_env, capsys):
    runpod_fake.command_hook = lambda argv, env, pod: ["false"]
    code, out, err = await thinkube(capsys, "cloud", "colab", *FAST)
    assert (code, out) == (1, "")
    (pod,) = runpod_fake.terminated.values()
    assert err.splitlines()[-1] == (
        f"thinkube: error: pod {pod.id} ended while starting (desiredStatus EXITED); "
        f"pod {pod.id} was terminated"
    )
    assert runpod_fake.pods == {}


async def test_colab_terminates_the_pod_when_jupyter_never_answers(runpod_fake, cloud_env, capsys):
    runpod_fake.command_hook = lambda argv, env, pod: ["sleep", "60"]
    code, out, err = await thinkube(capsys, "cloud", "colab", *FAST, "--timeout", "2")
    assert (code, out) == (1, "")
    (pod,) = runpod_fake.terminated.values()
    assert re.fullmatch(
        rf"thinkube: error: the server did not answer within \d+s \(last: ConnectError\); "
        rf"pod {pod.id} was terminated",
        err.splitlines()[-1],
    )
    assert runpod_fake.pods == {}
    assert pod.last_process.returncode is not None


# -- ls and rm --------------------------------------------------------------------


async def test_ls(runpod_fake, cloud_env, capsys):
    a, b = await make_pods(
        runpod_fake, ("lab-a", {"team": "a"}), ("lab-b", {"team": "b", "x": "1"})
    )
    code, out, _ = await thinkube(capsys, "cloud", "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "GPU", "$/H", "UPTIME", "META"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {a.id, b.id}
    assert rows[b.id][1:4] == ["lab-b", "RUNNING", "(starting)"] or rows[b.id][1:3] == [
        "lab-b",
        "RUNNING",
    ]
    assert rows[b.id][-1] == "team=b,x=1"

    code, out, _ = await thinkube(capsys, "cloud", "ls", "--meta", "team=a", "--json")
    (listed,) = json.loads(out)
    assert (listed["id"], listed["name"], listed["meta"], listed["gpu"]) == (
        a.id,
        "lab-a",
        {"team": "a"},
        "RTX A5000",
    )
    assert "secret-password-1" not in out  # env values other than metadata stay out
    code, out, _ = await thinkube(capsys, "cloud", "ls", "--meta", "team=c")
    assert (code, out) == (0, "No pods match.\n")


async def test_rm_refuses_without_confirmation_when_not_interactive(
    runpod_fake, cloud_env, capsys, monkeypatch
):
    (a,) = await make_pods(runpod_fake, ("lab-a", {"team": "a"}))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = await thinkube(capsys, "cloud", "rm", a.id)
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        "thinkube: error: refusing to terminate 1 pod(s) without confirmation: standard input "
        "is not a terminal; pass --yes"
    )
    assert list(runpod_fake.pods) == [a.id]


async def test_rm_asks_on_a_terminal(runpod_fake, cloud_env, capsys, monkeypatch):
    a, b = await make_pods(runpod_fake, ("lab-a", {"team": "a"}), ("lab-b", {"team": "a"}))
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, err = await thinkube(capsys, "cloud", "rm", "--meta", "team=a")
    assert (code, err.splitlines()[-1]) == (1, "thinkube: error: nothing terminated")
    assert "Terminate 2 pod(s)? Their disks are deleted too. [y/N]" in err
    assert len(runpod_fake.pods) == 2
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, err = await thinkube(capsys, "cloud", "rm", "--meta", "team=a")
    assert code == 0
    assert sorted(out.splitlines()) == sorted([f"terminated {a.id}", f"terminated {b.id}"])
    assert runpod_fake.pods == {}


async def test_rm_of_an_id_runpod_does_not_know_fails(runpod_fake, cloud_env, capsys):
    code, out, err = await thinkube(capsys, "cloud", "rm", "nosuchpod00000", "--yes")
    assert (code, out, err) == (1, "", "thinkube: error: no pod nosuchpod00000\n")
    # Nothing to confirm, nothing sent.
    code, out, err = await thinkube(capsys, "cloud", "rm", "nosuchpod00000", "x1")
    assert (code, out, err) == (1, "", "thinkube: error: no pods nosuchpod00000, x1\n")
    assert runpod_fake.requests_for("podTerminate") == []


async def test_rm_terminates_what_exists_and_names_what_does_not(runpod_fake, cloud_env, capsys):
    a, b = await make_pods(runpod_fake, ("lab-a", {}), ("lab-b", {}))
    code, out, err = await thinkube(capsys, "cloud", "rm", a.id, "nosuchpod00000", "--yes")
    assert (code, out, err) == (
        1,
        f"terminated {a.id}\n",
        "thinkube: error: no pod nosuchpod00000\n",
    )
    code, out, _ = await thinkube(capsys, "cloud", "rm", "nosuchpod00000", b.id, "--yes", "--json")
    assert (code, json.loads(out)) == (
        1,
        {"terminated": [b.id], "already_gone": [], "not_found": ["nosuchpod00000"]},
    )
    assert runpod_fake.pods == {}
    # RunPod forgets a terminated pod: its id is now one RunPod does not know.
    code, _, err = await thinkube(capsys, "cloud", "rm", a.id, "--yes")
    assert (code, err) == (1, f"thinkube: error: no pod {a.id}\n")


async def test_rm_of_a_pod_that_ends_meanwhile_is_done(runpod_fake, cloud_env, capsys):
    a, b = await make_pods(runpod_fake, ("lab-a", {}), ("lab-b", {}))
    # RunPod listed it, then (someone else terminated it) answers the terminate so.
    runpod_fake.inject(error="pod not found to terminate", field="podTerminate")
    code, out, err = await thinkube(capsys, "cloud", "rm", a.id, "--yes", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"terminated": [], "already_gone": [a.id], "not_found": []}
    # One RunPod reports as terminating already.
    runpod_fake.pods[b.id].set_status("TERMINATED", "Terminated by User")
    code, out, err = await thinkube(capsys, "cloud", "rm", b.id, "--yes")
    assert (code, out, err) == (0, f"terminated {b.id}\n", "")


async def test_rm_needs_ids_or_meta_not_both(runpod_fake, cloud_env, capsys):
    code, _, err = await thinkube(capsys, "cloud", "rm", "abc", "--meta", "a=b", "--yes")
    assert (code, err) == (2, "thinkube: error: give pod ids or --meta, not both\n")
    code, _, err = await thinkube(capsys, "cloud", "rm")
    assert (code, err) == (2, "thinkube: error: nothing to remove: give pod ids or --meta k=v\n")


# -- errors -----------------------------------------------------------------------


async def test_wrong_key_is_one_line_and_no_key_shows(runpod_fake, cloud_env, capsys, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_WRONG_KEY_123456")
    code, out, err = await thinkube(capsys, "cloud", "ls")
    assert (code, out, err) == (
        1,
        "",
        "thinkube: error: RunPod refused the API key (HTTP 401): Unauthorized\n",
    )
    monkeypatch.delenv("RUNPOD_API_KEY")
    code, out, err = await thinkube(capsys, "cloud", "offers")
    assert (code, err) == (
        1,
        "thinkube: error: no RunPod API key: set RUNPOD_API_KEY, or RUNPOD_API_KEY_FILE to a "
        "file holding it\n",
    )


async def test_key_file_option(runpod_fake, cloud_env, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY")
    key_file = tmp_path / "runpod-key"
    key_file.write_text(runpod_fake.api_key + "\n")
    code, out, _ = await thinkube(capsys, "cloud", "ls", "--json", "--api-key-file", str(key_file))
    assert (code, json.loads(out)) == (0, [])


async def test_runpod_down_is_one_line(runpod_fake, cloud_env, capsys):
    runpod_fake.inject(status=503, times=-1)
    code, out, err = await thinkube(capsys, "cloud", "offers")
    assert (code, out, err) == (
        1,
        "",
        "thinkube: error: RunPod did not answer gpuTypes after 4 attempt(s): HTTP 503\n",
    )


# -- as real processes ------------------------------------------------------------


async def run_process(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_python_dash_m_and_the_console_script(runpod_fake, cloud_env):
    code, out, err = await run_process(
        sys.executable,
        "-m",
        "thinkube_spawner.cli",
        "cloud",
        "offers",
        "--gpu",
        "H100",
        "--json",
        env=cloud_env,
    )
    assert code == 0, err
    assert [(o["display_name"], o["cloud_type"], o["price_per_hour"]) for o in json.loads(out)] == [
        ("H100 SXM", "SECURE", 2.69)
    ]
    script = Path(sys.executable).parent / "thinkube"
    assert script.exists(), "the thinkube console script is not installed (pip install -e .)"
    (pod,) = await make_pods(runpod_fake, ("lab-a", {}))
    code, out, err = await run_process(str(script), "cloud", "rm", pod.id, env=cloud_env)
    assert (code, out) == (1, "")
    assert err.endswith("standard input is not a terminal; pass --yes\n")
    assert list(runpod_fake.pods) == [pod.id]


@pytest.mark.parametrize(
    ("signum", "status", "last_line"),
    [
        (signal.SIGINT, 130, "thinkube: interrupted"),
        (signal.SIGTERM, 143, "thinkube: error: stopped by SIGTERM"),
        (signal.SIGHUP, 129, "thinkube: error: stopped by SIGHUP"),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
async def test_a_signal_while_waiting_terminates_the_pod(
    runpod_fake, cloud_env, signum, status, last_line
):
    """Ctrl-C, `kill` or a service manager, a closed terminal: the pod goes too."""
    runpod_fake.command_hook = lambda argv, env, pod: ["sleep", "60"]  # Jupyter never answers
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "thinkube_spawner.cli",
        "cloud",
        "colab",
        *FAST,
        cwd=ROOT,
        env={**os.environ, **cloud_env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        lines = []
        while not any("waiting for Jupyter" in line for line in lines):
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, f"the CLI ended early: {lines}"
            lines.append(line.decode())
        (pod,) = runpod_fake.pods.values()
        assert pod.desired_status == "RUNNING"
        process.send_signal(signum)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == status
    assert err.decode().splitlines()[-2:] == [
        f"thinkube: interrupted; pod {pod.id} was terminated",
        last_line,
    ]
    assert runpod_fake.pods == {}
    assert pod.desired_status == "TERMINATED"
    assert pod.last_process.returncode is not None


# -- the key never shows ----------------------------------------------------------


async def test_the_api_key_appears_in_no_output_or_log(
    runpod_fake, cloud_env, capsys, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    key = runpod_fake.api_key
    outputs = []

    async def run(*argv):
        code, out, err = await thinkube(capsys, "-vv", *argv)
        outputs.extend([out, err])
        return code

    assert await run("cloud", "offers") == 0
    assert await run("cloud", "offers", "--json", "--spot") == 0
    assert await run("cloud", "colab", "--meta", "leak=test", *FAST) == 0
    assert await run("cloud", "ls", "--json") == 0
    runpod_fake.inject(status=502, times=2)
    assert await run("cloud", "ls") == 0
    runpod_fake.inject(error="capacity", field="podFindAndDeployOnDemand", times=-1)
    assert await run("cloud", "colab", "--attempts", "1", *FAST) == 1
    runpod_fake.faults.clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert await run("cloud", "rm", "--meta", "leak=test") == 1
    assert await run("cloud", "rm", "--meta", "leak=test", "--yes") == 0
    code, out, err = await run_process(
        sys.executable, "-m", "thinkube_spawner.cli", "-vv", "cloud", "ls", env=cloud_env
    )
    outputs.extend([out, err])
    monkeypatch.setenv("RUNPOD_API_KEY", key[:-1] + "X")
    assert await run("cloud", "ls") == 1
    everything = "\n".join(outputs) + caplog.text
    assert "RunPod gpuTypes" in everything or "RunPod myself" in everything  # -vv did log
    assert key not in everything
    assert key[:-1] + "X" not in everything
    assert runpod_fake.pods == {}
