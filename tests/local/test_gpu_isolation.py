"""Hiding the GPUs a local server was not given (thinkube_core/gpu_isolation.py).

The namespaces are real (Linux mount and user namespaces, set up by the module's own
command); only the driver's files are a sample tree: this machine has no NVIDIA GPU, so
`/dev/nvidia<N>` are plain files and `/proc/driver/nvidia/gpus/<bus>/information` follows
the driver's layout (data/driver_information.txt: the layout of a real H100's file; record
a fresh one with `cat /proc/driver/nvidia/gpus/*/information`). On a GPU machine the `gpu`
tests in test_local_gpu.py check nvidia-smi itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.local.hubproc import REPO_ROOT, local_hub, option, server_processes
from tests.local.test_hub_command import form_fields
from thinkube_core import gpu_isolation
from thinkube_core.gpu_isolation import (
    DriverGpu,
    driver_gpus,
    hiding_plan,
    isolation_command,
    parse_information,
)
from thinkube_spawner.local import LocalAllocation, ThinkubeLocalSpawner

DATA = Path(__file__).with_name("data")
PROBE = Path(__file__).with_name("probe.py")
UUIDS = ["GPU-aaaaaaaa-0000-4000-8000-000000000000", "GPU-bbbbbbbb-1111-4111-8111-111111111111",
         "GPU-cccccccc-2222-4222-8222-222222222222"]  # fmt: skip


# --- reading the driver's files, and the plan ------------------------------------------------


def test_the_driver_information_file_gives_uuid_and_device_minor():
    text = (DATA / "driver_information.txt").read_text()
    assert parse_information("0000:18:00.0", text) == DriverGpu(
        bus="0000:18:00.0", uuid="GPU-5e1f3b4c-8a2d-4c7e-9f10-2b3c4d5e6f70", minor=3
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "GPU UUID: \t GPU-5e1f\n",  # no minor
        "GPU UUID: \t GPU-5e1f\nDevice Minor: \t three\n",
        "GPU UUID: \t 5e1f\nDevice Minor: \t 3\n",  # not a GPU UUID
        "Device Minor: \t 3\n",
        "\x00\xff garbage",
    ],
)
def test_odd_information_files_are_skipped_not_fatal(text):
    assert parse_information("0000:18:00.0", text) is None


def test_driver_gpus_lists_readable_gpus_and_skips_the_rest(tmp_path):
    tree = sample_driver_tree(tmp_path)
    (tree.gpus / "0000:99:00.0").mkdir()  # a folder without its information file
    (tree.gpus / "0000:98:00.0").mkdir()
    (tree.gpus / "0000:98:00.0" / "information").write_text("Model: odd\n")
    assert [(g.uuid, g.minor) for g in driver_gpus(str(tree.gpus))] == [
        (uuid, minor) for minor, uuid in enumerate(UUIDS)
    ]
    assert driver_gpus(str(tmp_path / "no-driver")) == []


def test_the_plan_covers_every_gpu_but_the_visible_ones():
    gpus = [DriverGpu(f"0000:0{i}:00.0", uuid, i) for i, uuid in enumerate(UUIDS)]
    plan = hiding_plan([UUIDS[1]], gpus, "/dev")
    assert plan.hidden_devices == ("/dev/nvidia0", "/dev/nvidia2")
    assert plan.kept_buses == ("0000:01:00.0",)
    assert hiding_plan([], gpus).hidden_devices == ("/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2")
    assert not hiding_plan(UUIDS, gpus).hides_anything
    assert not hiding_plan([], []).hides_anything


def test_the_command_prefix_names_the_module_the_gpus_and_the_command():
    command = isolation_command(UUIDS[:2], ["jupyterhub-singleuser", "--debug"], required=True)
    assert command[1:3] == ["-m", "thinkube_core.gpu_isolation"]
    assert command[command.index("--") + 1 :] == ["jupyterhub-singleuser", "--debug"]
    assert command[command.index("--visible") + 1] == ",".join(UUIDS[:2])
    assert "--required" in command and "--proc-dir" not in command


# --- the namespace, for real --------------------------------------------------------------


class SampleTree:
    def __init__(self, root: Path):
        self.root = root
        self.dev = root / "dev"
        self.gpus = root / "gpus"


def sample_driver_tree(root: Path) -> SampleTree:
    """/dev/nvidia0..2 as plain files that say which GPU they are, and the driver's folders."""
    tree = SampleTree(root)
    tree.dev.mkdir(parents=True)
    template = (DATA / "driver_information.txt").read_text()
    for minor, uuid in enumerate(UUIDS):
        device = tree.dev / f"nvidia{minor}"
        device.write_text(f"gpu {minor}\n")
        device.chmod(0o666)
        bus = f"0000:{0x18 + minor:02x}:00.0"
        (tree.gpus / bus).mkdir(parents=True)
        (tree.gpus / bus / "information").write_text(
            template.replace("GPU-5e1f3b4c-8a2d-4c7e-9f10-2b3c4d5e6f70", uuid)
            .replace("Device Minor: \t 3", f"Device Minor: \t {minor}")
            .replace("0000:18:00.0", bus)
        )
    (tree.dev / "nvidiactl").write_text("control\n")
    return tree


@pytest.fixture
def shared_tree():
    """A sample tree any user may read (pytest's tmp_path is its owner's alone), with the
    module and the probe copied in so that an unprivileged user can run them."""
    root = Path(tempfile.mkdtemp(prefix="thinkube-isolation-test-"))
    try:
        root.chmod(0o755)
        tree = sample_driver_tree(root)
        for path in [root, *root.rglob("*")]:
            path.chmod(
                path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o444
            )
        shutil.copy(gpu_isolation.__file__, root / "gpu_isolation.py")
        shutil.copy(PROBE, root / "probe.py")
        (root / "tmp").mkdir(mode=0o777)
        (root / "tmp").chmod(0o1777)
        yield tree
    finally:
        shutil.rmtree(root, ignore_errors=True)


def refuse_namespaces() -> None:
    """preexec_fn: a seccomp filter that refuses unshare(2) with EPERM, as Docker's default
    profile and locked-down kernels do, for this process and what it runs."""
    number = {"x86_64": 272, "aarch64": 97}.get(platform.machine())
    if number is None:
        raise OSError(f"no unshare syscall number known for {platform.machine()}")

    class Instruction(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]  # fmt: skip

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Instruction))]

    load_nr, jump_eq, ret = 0x20, 0x15, 0x06
    errno_eperm, allow = 0x00050000 | 1, 0x7FFF0000
    code = (Instruction * 4)(
        Instruction(load_nr, 0, 0, 0),
        Instruction(jump_eq, 0, 1, number),
        Instruction(ret, 0, 0, errno_eperm),
        Instruction(ret, 0, 0, allow),
    )
    program = Program(len(code), code)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(program), 0, 0):
        raise OSError(ctypes.get_errno(), "seccomp")


def run_isolated(tree: SampleTree, visible: list[str], python: str = sys.executable,
                 as_user: list[str] = (), required: bool = False, refused: bool = False):  # fmt: skip
    """The module's command around the probe (which then runs `true`); what the probe saw."""
    out = tree.root / "tmp" / f"seen-{len(os.listdir(tree.root / 'tmp'))}.json"
    command = [
        *as_user,
        python,
        str(tree.root / "gpu_isolation.py"),
        "--visible",
        ",".join(visible),
        *(["--required"] if required else []),
        "--proc-dir",
        str(tree.gpus),
        "--dev-dir",
        str(tree.dev),
        "--",
        python,
        str(tree.root / "probe.py"),
        str(out),
        "--dev-dir",
        str(tree.dev),
        "--proc-dir",
        str(tree.gpus),
        "--",
        "true",
    ]
    env = {**os.environ, "TMPDIR": str(tree.root / "tmp")}
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        preexec_fn=refuse_namespaces if refused else None,
    )
    seen = json.loads(out.read_text()) if out.exists() else None
    return done, seen


def assert_outside_unchanged(tree: SampleTree) -> None:
    for minor in range(3):
        assert (tree.dev / f"nvidia{minor}").read_text() == f"gpu {minor}\n"
    assert len(os.listdir(tree.gpus)) == 3
    leftovers = [n for n in os.listdir(tree.root / "tmp") if n.startswith("thinkube-gpu-")]
    assert leftovers == []  # the staging folder is gone


def test_inside_only_the_given_gpu_opens_and_the_driver_lists_only_it(shared_tree):
    done, seen = run_isolated(shared_tree, [UUIDS[1]])
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert seen["devices"] == {
        "nvidia0": "PermissionError",
        "nvidia1": "opens",
        "nvidia2": "PermissionError",
    }
    assert seen["driver_gpus"] == ["0000:19:00.0"]
    assert_outside_unchanged(shared_tree)


def test_a_cpu_only_server_sees_no_gpu_at_all(shared_tree):
    done, seen = run_isolated(shared_tree, [])
    assert done.returncode == 0, done.stderr
    assert set(seen["devices"].values()) == {"PermissionError"}
    assert seen["driver_gpus"] == []
    assert_outside_unchanged(shared_tree)


@pytest.mark.skipif(os.geteuid() != 0, reason="the test above already ran unprivileged")
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_an_unprivileged_server_gets_the_same_inside_a_user_namespace(shared_tree):
    python = shutil.which("python3", path="/usr/bin:/bin") or ""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if not python or subprocess.run([*nobody, python, "-c", ""]).returncode != 0:
        pytest.skip("needs a Python the user nobody may run (/usr/bin/python3)")
    done, seen = run_isolated(shared_tree, [UUIDS[2]], python=python, as_user=nobody)
    assert done.returncode == 0, done.stderr
    assert seen["uid"] == 65534  # the server keeps its own user
    assert seen["devices"] == {
        "nvidia0": "PermissionError",
        "nvidia1": "PermissionError",
        "nvidia2": "opens",
    }
    assert seen["driver_gpus"] == ["0000:1a:00.0"]
    assert_outside_unchanged(shared_tree)


def test_when_isolation_cannot_be_set_up_auto_warns_and_required_refuses(shared_tree):
    done, seen = run_isolated(shared_tree, [UUIDS[0]], refused=True)
    assert done.returncode == 0
    assert "cannot hide the other GPUs from this server" in done.stderr
    assert "nvidia-smi will list every GPU" in done.stderr
    assert "a private mount namespace: Operation not permitted" in done.stderr or (
        "an unprivileged user namespace: Operation not permitted" in done.stderr
    )
    assert seen["devices"]["nvidia1"] == "opens"  # the server ran, with CUDA_VISIBLE_DEVICES alone

    done, seen = run_isolated(shared_tree, [UUIDS[0]], required=True, refused=True)
    assert done.returncode == 1
    assert "not starting (gpu_isolation is 'required')" in done.stderr
    assert seen is None  # the server never ran
    assert_outside_unchanged(shared_tree)


def test_a_bad_command_line_is_a_plain_error():
    done = subprocess.run(
        [sys.executable, "-m", "thinkube_core.gpu_isolation", "--visible", UUIDS[0]],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 2 and "no command given after --" in done.stderr


# --- through `thinkube hub` -------------------------------------------------------------------


async def test_a_server_spawned_by_the_hub_sees_none_of_the_gpus_it_was_not_given(shared_tree):
    """The spawner wraps the server's command when the driver lists GPUs to hide: a CPU-only
    server (this machine's NVML has no GPU to offer) sees none of the sample GPUs, while
    the hub and the rest of the machine still see all three."""
    seen_file = shared_tree.root / "tmp" / "server.json"
    config = shared_tree.root / "hub_extra.py"
    singleuser = str(Path(sys.executable).parent / "jupyterhub-singleuser")
    config.write_text(
        "c = get_config()  # noqa: F821\n"
        f"c.ThinkubeLocalSpawner.nvidia_proc_dir = {str(shared_tree.gpus)!r}\n"
        f"c.ThinkubeLocalSpawner.nvidia_dev_dir = {str(shared_tree.dev)!r}\n"
        "c.ThinkubeLocalSpawner.gpu_isolation = 'required'\n"
        "c.ThinkubeLocalSpawner.environments = {'local': {'cmd': "
        f"[{sys.executable!r}, {str(shared_tree.root / 'probe.py')!r}, {str(seen_file)!r}, "
        "'--dev-dir', "
        f"{str(shared_tree.dev)!r}, '--proc-dir', {str(shared_tree.gpus)!r}, '--', "
        f"{singleuser!r}]}}}}\n"
    )
    async with local_hub(shared_tree.root / "hub", config=config) as hub:
        alice = await hub.login("alice")
        html = await hub.form(alice)
        fields = {**form_fields(html), option("gpus"): "0", option("cpu"): "1"}
        response = await alice.post(
            urljoin(hub.url, "hub/spawn"), data={**fields, "_xsrf": hub.xsrf(alice)}
        )
        assert response.status_code == 200
        await hub.server(alice, "alice")
        api = await alice.get(urljoin(hub.url, "user/alice/api"))
        assert api.status_code == 200 and "version" in api.json()

        seen = json.loads(seen_file.read_text())
        # Isolated first (as root, when the hub is), then started as the person's account.
        account = hub.account("alice")
        assert seen["uid"] == (account.pw_uid if account else os.geteuid())
        assert seen["cuda_visible_devices"] == ""
        assert set(seen["devices"].values()) == {"PermissionError"}
        assert seen["driver_gpus"] == []
        (process,) = server_processes(hub, "alice")
        assert "thinkube_core.gpu_isolation" not in " ".join(process.cmdline())  # exec'd away
        assert_outside_unchanged(shared_tree)
        await hub.stop_server(alice, "alice")


@pytest.mark.parametrize(
    "setting, gpus, wrapped",
    [
        ("auto", (), True),  # a CPU server: all three hidden
        ("auto", (UUIDS[0],), True),
        ("auto", tuple(UUIDS), False),  # it has every GPU: nothing to hide, nothing to wrap
        ("required", (UUIDS[1],), True),
        ("off", (), False),
    ],
)
def test_the_spawner_wraps_the_command_only_when_there_is_something_to_hide(
    tmp_path, setting, gpus, wrapped
):
    tree = sample_driver_tree(tmp_path)
    spawner = ThinkubeLocalSpawner(
        gpu_isolation=setting, nvidia_proc_dir=str(tree.gpus), nvidia_dev_dir=str(tree.dev)
    )
    command = spawner.isolated(LocalAllocation((1,), gpus, 2, False), ["jupyterhub-singleuser"])
    if not wrapped:
        assert command == ["jupyterhub-singleuser"]
        return
    assert command == isolation_command(
        gpus,
        ["jupyterhub-singleuser"],
        required=setting == "required",
        proc_dir=str(tree.gpus),
        dev_dir=str(tree.dev),
    )


def test_a_machine_without_the_nvidia_driver_runs_servers_as_they_are(tmp_path):
    spawner = ThinkubeLocalSpawner(nvidia_proc_dir=str(tmp_path / "none"))
    allocation = LocalAllocation((1,), (), 2, False)
    assert spawner.isolated(allocation, ["jupyterhub-singleuser"]) == ["jupyterhub-singleuser"]
