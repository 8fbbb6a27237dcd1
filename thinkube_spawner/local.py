"""ThinkubeLocalSpawner: the spawn form of ThinkubeSpawner on one machine, without Kubernetes.

The same form (menu.py, form.py, templates/form.html) is built from the availability service
running with ``inventory = "local"`` (hub_service/local.py). On submit the choice is checked
against fresh availability (`check_choice`, exactly as ThinkubeSpawner does), then applied to
a local process by the pure functions here:

- GPUs: ``CUDA_VISIBLE_DEVICES`` set to the chosen GPUs' UUIDs ("" for none, so a CPU server
  sees no GPU);
- CPUs: the process is pinned to that many free cores (CPU affinity);
- memory: a systemd scope with ``MemoryMax`` where the machine has systemd on cgroup v2,
  otherwise advisory (the form says so);
- the machine's other GPUs are also hidden from NVML (nvidia-smi) in a private mount
  namespace (gpu_isolation.py).

The cores and GPUs picked are recorded in ``user_options["allocation"]`` (and in the spawner's
state), which is how the service, reading the hub's API, counts them as taken. Within the hub
the pick also skips what the other running local servers hold, so two servers started in the
same instant never get the same GPU or core.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, CaselessStrEnum, Dict, Integer, List, Unicode, default

from hub_service.local import ALLOCATION_KEY

from .availability import AvailabilitySettings, ServiceUnavailable, running_hub
from .errors import choice_error, service_unavailable_error
from .gpu_isolation import DEV_DIR, NVIDIA_PROC_DIR, driver_gpus, hiding_plan, isolation_command
from .menu import (
    GIB,
    PROFILE_SLUG,
    Choice,
    ChoiceError,
    Menu,
    MenuSettings,
    build_menu,
    check_choice,
)
from .shaping import PodSettings, PodTemplate

__all__ = [
    "LocalAllocation",
    "ThinkubeLocalSpawner",
    "memory_enforcement",
    "pick_devices",
    "process_settings",
    "scope_unit_name",
]


# --- pure: the choice applied to a local process --------------------------------------------


@dataclass(frozen=True)
class LocalAllocation:
    cores: tuple[int, ...]
    gpus: tuple[str, ...]  # UUIDs
    memory_gib: int
    memory_enforced: bool

    def as_dict(self) -> dict:
        return {
            "cores": list(self.cores),
            "gpus": list(self.gpus),
            "memory_gib": self.memory_gib,
            "memory_enforced": self.memory_enforced,
        }


def pick_devices(
    choice: Choice,
    machine: dict,
    taken_cores: set[int],
    taken_gpus: set[str],
    memory_enforced: bool = False,
) -> LocalAllocation:
    """Free cores and GPUs for `choice` on `machine` (the service's node document), skipping
    those taken. Cores: ceil(CPUs) of them, the highest-numbered first (core 0 carries most
    of the system's interrupts). GPUs: of the chosen model, lowest index first. ChoiceError
    (capacity) when there are not enough."""
    local = machine.get("local") or {}
    cores_wanted = max(1, math.ceil(choice.cpu))
    free_cores = [c for c in local.get("cores") or [] if c not in taken_cores]
    if len(free_cores) < cores_wanted:
        raise ChoiceError(
            f"{len(free_cores)} CPU core{'s are' if len(free_cores) != 1 else ' is'} free on "
            f"this machine now, not {cores_wanted}: choose fewer CPUs, or wait for a server to stop.",
            capacity=True,
        )
    cores = tuple(sorted(free_cores[-cores_wanted:]))
    gpus: tuple[str, ...] = ()
    if choice.gpus:
        model = choice.placement.gpu_model
        candidates = sorted(
            (
                g
                for g in local.get("gpus") or []
                if g["uuid"] not in taken_gpus
                and (model is None or g["name"] == model or choice.placement.kind == "node")
            ),
            key=lambda g: g["index"],
        )
        if len(candidates) < choice.gpus:
            raise ChoiceError(
                f"{len(candidates)} {model or 'GPU'}{'s' if len(candidates) != 1 else ''} "
                f"free on this machine now, not {choice.gpus}: choose fewer GPUs, or wait.",
                capacity=True,
            )
        gpus = tuple(g["uuid"] for g in candidates[: choice.gpus])
    return LocalAllocation(cores, gpus, choice.memory_gib, memory_enforced)


def process_settings(
    allocation: LocalAllocation, cmd: list[str], memory_mode: str | None, unit: str
) -> tuple[dict[str, str], list[str]]:
    """The environment to add and the command to run for an allocation. `memory_mode`:
    "systemd" (root) or "systemd-user" wraps the command in a transient systemd scope with
    MemoryMax (and no swap beyond it); None runs it as it is."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(allocation.gpus)}
    if memory_mode is None:
        return env, list(cmd)
    wrapper = ["systemd-run"]
    if memory_mode == "systemd-user":
        wrapper.append("--user")
    wrapper += [
        "--scope",
        "--quiet",
        "--collect",
        f"--unit={unit}",
        "-p",
        f"MemoryMax={allocation.memory_gib * GIB}",
        "-p",
        "MemorySwapMax=0",
        "--",
    ]
    return env, wrapper + list(cmd)


def scope_unit_name(user: str, server: str, suffix: str) -> str:
    """A systemd scope name for a server: unit names allow only [A-Za-z0-9:_.-], and user
    names may hold more (e-mail addresses from OAuth)."""
    name = re.sub(r"[^A-Za-z0-9:_.-]", "-", f"thinkube-{user}-{server or 'default'}-{suffix}")
    return name[:200]


def memory_enforcement(
    systemd_run: str | None = None,
    systemd_booted: bool | None = None,
    cgroup2_memory: bool | None = None,
    is_root: bool | None = None,
    user_bus: bool | None = None,
) -> str | None:
    """How memory can be enforced here: "systemd" (root), "systemd-user" (a user manager
    with a session bus), or None (advisory). Each fact is read from the machine unless
    given."""
    systemd_run = shutil.which("systemd-run") if systemd_run is None else systemd_run
    if systemd_booted is None:
        systemd_booted = os.path.isdir("/run/systemd/system")
    if cgroup2_memory is None:
        try:
            controllers = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        cgroup2_memory = "memory" in controllers
    is_root = os.geteuid() == 0 if is_root is None else is_root
    if user_bus is None:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        user_bus = bool(runtime) and os.path.exists(os.path.join(runtime, "bus"))
    if not (systemd_run and systemd_booted and cgroup2_memory):
        return None
    if is_root:
        return "systemd"
    return "systemd-user" if user_bus else None


def _default_environments() -> dict[str, dict]:
    singleuser = Path(sys.executable).parent / "jupyterhub-singleuser"
    return {"local": {"cmd": [str(singleuser)]}}


# --- the spawner ------------------------------------------------------------------------------


class ThinkubeLocalSpawner(AvailabilitySettings, LocalProcessSpawner):
    """Local processes, placed by the thinkube spawn form (`spawner_class = "thinkube-local"`)."""

    cpu_choices = List(
        Integer(),
        [1, 2, 4, 8, 16],
        config=True,
        help="CPU core counts offered; each server is pinned to that many cores, e.g. `[1, 2, 4]`.",
    )
    memory_choices = List(
        Integer(),
        [2, 4, 8, 16, 32, 64],
        config=True,
        help="Memory offered in GiB (enforced with a systemd scope where possible), e.g. `[4, 16]`.",
    )
    gpu_choices = List(
        Integer(), [0, 1, 2, 4, 8], config=True, help="GPU counts offered, e.g. `[0, 1, 2]`."
    )
    environments = Dict(
        config=True,
        help="The image catalog as local environments: catalog entry name -> {'cmd': the "
        "jupyterhub-singleuser command to run, 'env': extra environment}. Catalog entries "
        "without an environment are not offered. Default: `{'local': {'cmd': "
        "['<this Python's bin>/jupyterhub-singleuser']}}`. E.g. `{'torch': {'cmd': "
        "['/opt/envs/torch/bin/jupyterhub-singleuser']}}`.",
    )

    @default("environments")
    def _default_environments(self) -> dict:
        return _default_environments()

    memory_limit = Unicode(
        "auto",
        config=True,
        help="How the memory choice is enforced: `auto` (a systemd scope with MemoryMax where "
        "systemd runs on cgroup v2, else advisory), `off` (always advisory). E.g. `off`.",
    )
    gpu_isolation = CaselessStrEnum(
        ["auto", "required", "off"],
        "auto",
        config=True,
        help="Hiding the machine's other GPUs from a server's NVML (nvidia-smi, GPU monitors) "
        "as well as from CUDA: `auto` (a private mount namespace per server where the machine "
        "allows one; where it does not, the server's log says so and CUDA_VISIBLE_DEVICES "
        "alone applies), `required` (a server that cannot be isolated does not start), `off` "
        "(CUDA_VISIBLE_DEVICES only). E.g. `required`.",
    )
    nvidia_proc_dir = Unicode(
        NVIDIA_PROC_DIR,
        config=True,
        help="Where the NVIDIA driver lists the machine's GPUs (one folder per GPU with an "
        "`information` file), read to find each GPU's device file. Change it only where the "
        f"driver's files live elsewhere, e.g. `/host/proc/driver/nvidia/gpus`. Default `{NVIDIA_PROC_DIR}`.",
    )
    nvidia_dev_dir = Unicode(
        DEV_DIR,
        config=True,
        help="Where the GPUs' device files (`nvidia<minor>`) are, e.g. `/host/dev`. Default `/dev`.",
    )
    system_users = Bool(
        False,
        config=True,
        help="Run each server as the system user of the same name (LocalProcessSpawner's "
        "setuid; needs the hub to run as root and users from PAM or similar). False: run as "
        "the hub's user in home_dir_template. E.g. `True`.",
    )
    home_dir_template = Unicode(
        "/tmp/thinkube-users/{username}",
        config=True,
        help="Where each user's server starts when system_users is False, e.g. "
        "`/srv/thinkube/users/{username}`.",
    )

    @default("options_form")
    def _default_options_form(self):
        return self._render_form

    @default("options_from_form")
    def _default_options_from_form(self):
        from .form import options_from_formdata

        return options_from_formdata

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allocation: LocalAllocation | None = None
        self._configured_cmd = list(self.cmd)
        self._extra_env: dict[str, str] = {}  # set per start from the choice

    # -- the form ------------------------------------------------------------------------

    def menu_settings(self) -> MenuSettings:
        return MenuSettings(
            cpu_choices=tuple(float(c) for c in self.cpu_choices),
            memory_choices_gib=tuple(self.memory_choices),
            gpu_choices=tuple(self.gpu_choices),
            cpu_guarantee_ratio=1.0,  # a choice of N CPUs pins N whole cores
            mem_guarantee_ratio=1.0,
            max_nodes_listed=1,
            single_machine=True,
            # each GPU model has a resource name of its own here: no product labels
            pod=PodTemplate(PodSettings(match_gpu_product=False)),
        )

    async def fresh_menu(self) -> tuple[Menu, dict]:
        answer = await self.availability.fetch()  # one machine: a small document, always fresh
        data = answer.document()
        images = [i for i in data["images"] if i["name"] in self.environments]
        freshness = answer.freshness
        menu = build_menu(data["nodes"], data["summary"], images, self.menu_settings(), freshness)
        machine = data["nodes"][0] if data["nodes"] else {}
        return menu, machine

    def memory_mode(self) -> str | None:
        return None if self.memory_limit == "off" else memory_enforcement()

    async def _render_form(self, spawner=None) -> str:
        from .form import machine_summary_html, menu_profile, render_form, unavailable_profile

        try:
            menu, machine = await self.fresh_menu()
        except ServiceUnavailable as err:
            self.log.warning("Spawn form for %s: %s", self.user.name, err)
            return render_form(unavailable_profile(str(err)))
        before = machine_summary_html(machine, self.memory_mode() is not None) if machine else ""
        options = {k: v for k, v in (self.user_options or {}).items() if k != ALLOCATION_KEY}
        return render_form(menu_profile(menu, options), options, before=before)

    # -- start ---------------------------------------------------------------------------

    def _held_elsewhere(self) -> tuple[set[int], set[str]]:
        """Cores and GPUs held by the hub's other active local servers."""
        cores: set[int] = set()
        gpus: set[str] = set()
        hub = running_hub()
        for user in list(hub.users.values()) if hub else []:
            for spawner in list(user.spawners.values()):
                held = getattr(spawner, "allocation", None)
                if spawner is self or held is None or not spawner.active:
                    continue
                cores.update(held.cores)
                gpus.update(held.gpus)
        return cores, gpus

    async def check_and_allocate(self) -> tuple[Choice, LocalAllocation]:
        try:
            menu, machine = await self.fresh_menu()
        except ServiceUnavailable as err:
            raise service_unavailable_error(err) from None
        options = {"profile": PROFILE_SLUG, **(self.user_options or {})}
        try:
            choice = check_choice(options, menu)
            local = machine.get("local") or {}
            held_cores, held_gpus = self._held_elsewhere()
            # No await from here to recording the pick: another spawn cannot interleave.
            allocation = pick_devices(
                choice,
                machine,
                held_cores | set(local.get("cores_taken") or []),
                held_gpus | {g["uuid"] for g in local.get("gpus") or [] if g.get("taken")},
                memory_enforced=self.memory_mode() is not None,
            )
        except ChoiceError as err:
            self.log.info("Rejected spawn options for %s: %s", self.user.name, err)
            raise choice_error(err) from None
        self.allocation = allocation
        self.user_options = {**choice.as_user_options(), ALLOCATION_KEY: allocation.as_dict()}
        return choice, allocation

    async def start(self):
        choice, allocation = await self.check_and_allocate()
        environment = self.environments.get(choice.image["name"]) or {}
        base_cmd = self.isolated(allocation, list(environment.get("cmd") or self._configured_cmd))
        unit = scope_unit_name(self.user.name, self.name, f"{os.getpid()}-{secrets.token_hex(3)}")
        extra_env, self.cmd = process_settings(
            allocation, base_cmd, self.memory_mode() if allocation.memory_enforced else None, unit
        )
        self._extra_env = {**dict(environment.get("env") or {}), **extra_env}
        self.log.info(
            "Spawning %s: %s, cores %s, GPUs %s, %d GiB (%s)",
            self._log_name,
            choice.image["name"],
            ",".join(map(str, allocation.cores)),
            ",".join(allocation.gpus) or "none",
            allocation.memory_gib,
            "enforced" if allocation.memory_enforced else "advisory",
        )
        try:
            return await super().start()
        except BaseException:
            self.allocation = None
            raise

    def isolated(self, allocation: LocalAllocation, cmd: list[str]) -> list[str]:
        """`cmd`, run so that the machine's other GPUs are hidden from it (gpu_isolation)."""
        if self.gpu_isolation == "off":
            return cmd
        gpus = driver_gpus(self.nvidia_proc_dir)
        if not hiding_plan(allocation.gpus, gpus, self.nvidia_dev_dir).hides_anything:
            return cmd  # no NVIDIA GPU here, or the server has them all
        return isolation_command(
            allocation.gpus,
            cmd,
            required=self.gpu_isolation == "required",
            proc_dir=self.nvidia_proc_dir,
            dev_dir=self.nvidia_dev_dir,
        )

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            self.allocation = None

    def get_env(self):
        env = super().get_env()
        env.update(self._extra_env)
        return env

    def make_preexec_fn(self, name):
        cores = set(self.allocation.cores) if self.allocation else None
        if self.system_users:
            switch_user = super().make_preexec_fn(name)
        else:
            home = self.home_dir_for_user()

            def switch_user():
                os.makedirs(home, 0o700, exist_ok=True)
                os.chdir(home)

        def preexec():
            if cores:
                os.sched_setaffinity(0, cores)
            switch_user()

        return preexec

    def home_dir_for_user(self) -> str:
        return self.home_dir_template.format(username=self.user.name)

    def user_env(self, env):
        if self.system_users:
            return super().user_env(env)
        env["USER"] = self.user.name
        env["HOME"] = self.home_dir_for_user()
        env["SHELL"] = "/bin/bash"
        return env

    # -- state: the pick outlives a hub restart --------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.allocation is not None:
            state["thinkube_allocation"] = self.allocation.as_dict()
        return state

    def load_state(self, state):
        super().load_state(state)
        held = state.get("thinkube_allocation")
        if isinstance(held, dict):
            self.allocation = LocalAllocation(
                tuple(held.get("cores") or ()),
                tuple(held.get("gpus") or ()),
                int(held.get("memory_gib") or 0),
                bool(held.get("memory_enforced")),
            )
            self.user_options = {**(self.user_options or {}), ALLOCATION_KEY: held}

    def clear_state(self):
        super().clear_state()
        self.allocation = None
