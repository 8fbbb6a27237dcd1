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
  namespace (gpu_isolation.py);
- the account: never root. A hub running as root gives each person a system account of
  their own (accounts.py, made on their first start) or, with `system_users`, uses theirs;
  the server's command then ends with run_as.py, which takes that account for good after
  the steps that need root (the systemd scope, the isolation namespace). A hub not running
  as root runs every server as its own user.

The cores and GPUs are picked and claimed in one step in the claims folder the hub shares
with the service (thinkube_core/device_claims.py), skipping what other servers and the
service's GPU jobs hold, so that no two of them ever get the same GPU or core, even when
started in the same instant. The claim follows the server's process once it runs and is
released when it stops. The pick is also recorded in the spawner's state, which the
service reads through the hub's API.
"""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, CaselessStrEnum, Dict, Integer, List, Unicode, default, validate

from thinkube_core.accounts import (
    DEFAULT_PREFIX,
    PREFIX,
    AccountError,
    closed_to_others,
    person_account,
)
from thinkube_core.allocation import STATE_KEY as ALLOCATION_STATE
from thinkube_core.allocation import allocation_in
from thinkube_core.device_claims import Claim, DeviceClaims, claims_dir, pick_cores, pick_gpus
from thinkube_core.gpu_isolation import DEV_DIR, NVIDIA_PROC_DIR, isolated
from thinkube_core.waiting import QUEUE_ENTRY_OPTION, WAIT_OPTION, wants_wait

from .availability import AvailabilitySettings, ServiceUnavailable
from .errors import choice_error, service_unavailable_error, spawn_error
from .labels import server_label
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
from .waiting import wait_in_line

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
    all_cores = local.get("cores") or []
    cores = pick_cores(all_cores, taken_cores, cores_wanted)
    if cores is None:
        free = sum(1 for c in all_cores if c not in taken_cores)
        raise ChoiceError(
            f"{free} CPU core{'s are' if free != 1 else ' is'} free on this machine now, not "
            f"{cores_wanted}: choose fewer CPUs, or wait for a server or job to stop.",
            capacity=True,
        )
    gpus: tuple[str, ...] = ()
    if choice.gpus:
        model = choice.placement.gpu_model

        def accepts(gpu) -> bool:
            return model is None or gpu["name"] == model or choice.placement.kind == "node"

        picked = pick_gpus(local.get("gpus") or [], taken_gpus, choice.gpus, accepts)
        if picked is None:
            free = sum(
                1 for g in local.get("gpus") or [] if g["uuid"] not in taken_gpus and accepts(g)
            )
            raise ChoiceError(
                f"{free} {model or 'GPU'}{'s' if free != 1 else ''} free on this machine now, "
                f"not {choice.gpus}: choose fewer GPUs, or wait.",
                capacity=True,
            )
        gpus = picked
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


def run_as_command(account: str, cmd: list[str], python: str = sys.executable) -> list[str]:
    """`cmd`, started as `account` by run_as.py (isolated mode: no module is looked up in
    the working directory or from the environment while still root)."""
    return [python, "-I", "-m", "thinkube_core.run_as", account, "--", *cmd]


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
    claims_dir = Unicode(
        config=True,
        help="The folder where the hub and the thinkube-resources service record which cores "
        "and GPUs each server and each GPU job holds, so that none is given twice. The "
        "service must use the same folder (its environment's THINKUBE_CLAIMS_DIR; `thinkube "
        "hub` sets both). Default: $THINKUBE_CLAIMS_DIR, else `thinkube-claims` in the hub's "
        "working directory. E.g. `/srv/thinkube/claims`.",
    )

    @default("claims_dir")
    def _default_claims_dir(self) -> str:
        return str(claims_dir())

    system_users = Bool(
        False,
        config=True,
        help="With the hub running as root: run each server as the existing system user of "
        "the same name (users from PAM or similar), in their home. False: each person gets "
        "an account made for them (account_prefix). Never uid 0. E.g. `True`.",
    )
    account_prefix = Unicode(
        DEFAULT_PREFIX,
        config=True,
        help="With the hub running as root (and system_users False): each person's server "
        "runs as the system account <prefix><name>, made with useradd on their first start "
        "(names that are not valid account names, or reach 26 characters, are cut and end "
        "with a hash). a-z, 0-9, _ and -, up to 20 characters. E.g. `lab-`.",
    )
    account_home_root = Unicode(
        "/home",
        config=True,
        help="Where the homes of the accounts made for people go (<root>/<account>, mode "
        "0700); other users must be able to pass through it. E.g. `/data/homes`.",
    )
    home_dir_template = Unicode(
        "/tmp/thinkube-users/{username}",
        config=True,
        help="Where each user's server starts when the hub does not run as root (every "
        "server then runs as the hub's user), e.g. `/srv/thinkube/users/{username}`.",
    )

    @validate("account_prefix")
    def _valid_prefix(self, proposal):
        if not PREFIX.match(proposal["value"]):
            raise ValueError(
                f"account_prefix {proposal['value']!r}: a-z, 0-9, _ and - only (not "
                "starting with a digit or -), 20 characters at most"
            )
        return proposal["value"]

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
        self.account: pwd.struct_passwd | None = None  # whom the server runs as, when root

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
        from .form import (
            machine_summary_html,
            menu_profile,
            render_form,
            unavailable_profile,
            wait_offers,
            wait_targets,
        )

        try:
            menu, machine = await self.fresh_menu()
        except ServiceUnavailable as err:
            self.log.warning("Spawn form for %s: %s", self.user.name, err)
            return render_form(unavailable_profile(str(err)))
        before = machine_summary_html(machine, self.memory_mode() is not None) if machine else ""
        options = self.user_options or {}
        waits = []
        if self.offer_waiting and wait_targets(menu):
            waits = wait_offers(menu, await self.availability.waiting_estimates())
        return render_form(menu_profile(menu, options, waits=waits), options, before=before)

    # -- the claim on this server's cores and GPUs ------------------------------------------

    @property
    def claims(self) -> DeviceClaims:
        return DeviceClaims(self.claims_dir)

    @property
    def claim_id(self) -> str:
        return f"{self.user.name}/{self.name}"

    async def _release(self) -> None:
        self.allocation = None
        await asyncio.to_thread(self.claims.release, "server", self.claim_id)

    # -- start ---------------------------------------------------------------------------

    async def check_and_allocate(self) -> tuple[Choice, LocalAllocation]:
        try:
            menu, machine = await self.fresh_menu()
        except ServiceUnavailable as err:
            raise service_unavailable_error(err) from None
        options = {"profile": PROFILE_SLUG, **(self.user_options or {})}
        wait = wants_wait(options)
        options.pop(WAIT_OPTION, None)
        options.pop(QUEUE_ENTRY_OPTION, None)  # the queue's start: checked as any other
        local = machine.get("local") or {}
        # What the service counted at its last reading (servers from the hub's API), besides
        # what the claims say now (servers and jobs, this very instant).
        counted_cores = set(local.get("cores_taken") or [])
        counted_gpus = {g["uuid"] for g in local.get("gpus") or [] if g.get("taken")}
        memory_enforced = self.memory_mode() is not None
        picked: list[LocalAllocation] = []

        def choose(claimed_cores: set[int], claimed_gpus: set[str]):
            allocation = pick_devices(
                choice,
                machine,
                claimed_cores | counted_cores,
                claimed_gpus | counted_gpus,
                memory_enforced=memory_enforced,
            )
            picked.append(allocation)
            return allocation.cores, allocation.gpus, allocation.memory_gib * GIB

        try:
            choice = check_choice(options, menu)
            # Picked and claimed under the claims' lock: no other server or job of this
            # machine can pick the same core or GPU meanwhile.
            await asyncio.to_thread(
                self.claims.claim, "server", self.claim_id, self.user.name, os.getpid(), choose
            )
        except ChoiceError as err:
            if wait and err.capacity and err.choice is not None and self.offer_waiting:
                # every GPU taken: join the GPU queue instead (the hub answers at once)
                spec = self.menu_settings().pod.spec(err.choice)
                raise await wait_in_line(self, err.choice, str(err), spec, True) from None
            self.log.info("Rejected spawn options for %s: %s", self.user.name, err)
            raise choice_error(err) from None
        self.allocation = allocation = picked[-1]
        self.user_options = choice.as_user_options()
        return choice, allocation

    async def start(self):
        choice, allocation = await self.check_and_allocate()
        try:
            environment = self.environments.get(choice.image["name"]) or {}
            server_cmd = list(environment.get("cmd") or self._configured_cmd)
            self.account = await self.server_account(server_cmd)
            if self.account is not None:
                server_cmd = run_as_command(self.account.pw_name, server_cmd)
            base_cmd = self.isolated(allocation, server_cmd)
            unit = scope_unit_name(
                self.user.name, self.name, f"{os.getpid()}-{secrets.token_hex(3)}"
            )
            extra_env, self.cmd = process_settings(
                allocation,
                base_cmd,
                self.memory_mode() if allocation.memory_enforced else None,
                unit,
            )
            self._extra_env = {**dict(environment.get("env") or {}), **extra_env}
            self.log.info(
                "Spawning %s as %s: %s, cores %s, GPUs %s, %d GiB (%s)",
                server_label(self),
                self.account.pw_name if self.account else f"uid {os.geteuid()}",
                choice.image["name"],
                ",".join(map(str, allocation.cores)),
                ",".join(allocation.gpus) or "none",
                allocation.memory_gib,
                "enforced" if allocation.memory_enforced else "advisory",
            )
            started = await super().start()
            # The claim now lives as long as the server's process (through a hub restart).
            await asyncio.to_thread(self.claims.move_to, "server", self.claim_id, self.pid)
            return started
        except BaseException:
            await self._release()
            raise

    async def server_account(self, server_cmd: list[str]) -> pwd.struct_passwd | None:
        """The account the server runs as when the hub is root (made on the person's first
        start), after checking that it could run the server's command; None when the hub
        is not root and the server runs as the hub's own user."""
        if os.geteuid() != 0:
            if self.system_users:
                raise spawn_error(
                    "system_users needs the hub to run as root; nothing was started.",
                    reason="account",
                    status_code=503,
                )
            return None
        try:
            account, made = await person_account(
                self.user.name, self.system_users, self.account_prefix, self.account_home_root
            )
            if made:
                self.log.info(
                    "Made the system account %s (uid %d, home %s) for %s",
                    account.pw_name,
                    account.pw_uid,
                    account.pw_dir,
                    self.user.name,
                )
        except AccountError as err:
            self.log.error("No account for %s: %s", self.user.name, err)
            raise spawn_error(
                f"Your server has no account to run as: {err}. Nothing was started; an "
                "administrator can fix this.",
                reason="account",
                status_code=503,
            ) from None
        program = shutil.which(server_cmd[0], path=self.get_env().get("PATH")) or server_cmd[0]
        closed = closed_to_others(program)
        if closed:
            self.log.error("%s cannot run %s: %s", account.pw_name, program, closed)
            raise spawn_error(
                f"Your server would run as {account.pw_name}, which cannot run {program}: "
                f"{closed}. Nothing was started; an administrator must put the environment "
                "where other users can read it (e.g. under /opt).",
                reason="account",
                status_code=503,
            )
        return account

    def isolated(self, allocation: LocalAllocation, cmd: list[str]) -> list[str]:
        """`cmd`, run so that the machine's other GPUs are hidden from it (gpu_isolation)."""
        return isolated(
            allocation.gpus,
            cmd,
            self.gpu_isolation,
            proc_dir=self.nvidia_proc_dir,
            dev_dir=self.nvidia_dev_dir,
        )

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            await self._release()

    def get_env(self):
        env = super().get_env()
        env.update(self.jobs_env())
        env.update(self._extra_env)
        return env

    def make_preexec_fn(self, name):
        cores = set(self.allocation.cores) if self.allocation else None
        account = self.account
        home = self.home_dir_for_user()

        def preexec():
            if cores:
                os.sched_setaffinity(0, cores)
            if account is not None:
                # Still root here: stay out of the person's folder until run_as has taken
                # their account (it starts the server in their home).
                os.chdir("/")
            else:
                os.makedirs(home, 0o700, exist_ok=True)
                os.chdir(home)

        return preexec

    def home_dir_for_user(self) -> str:
        if self.account is not None:
            return self.account.pw_dir
        return self.home_dir_template.format(username=self.user.name)

    def user_env(self, env):
        if self.account is not None:
            env["USER"] = env["LOGNAME"] = self.account.pw_name
            env["SHELL"] = self.account.pw_shell or "/bin/sh"
        else:
            env["USER"] = self.user.name
            env["SHELL"] = "/bin/bash"
        env["HOME"] = self.home_dir_for_user()
        return env

    # -- state: the pick outlives a hub restart --------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.allocation is not None:
            state[ALLOCATION_STATE] = self.allocation.as_dict()
        return state

    def load_state(self, state):
        super().load_state(state)
        held = allocation_in(state)
        if held is None:
            return
        self.allocation = LocalAllocation(
            tuple(held["cores"]),
            tuple(held["gpus"]),
            int(held["memory_gib"]),
            held["memory_enforced"],
        )
        if self.pid:
            # A server that ran before the hub restarted: its claim stays (or comes back,
            # should the claims folder have been lost), tied to its process.
            clashing = self.claims.keep(
                Claim(
                    "server",
                    self.claim_id,
                    self.user.name,
                    self.pid,
                    None,
                    self.allocation.cores,
                    self.allocation.gpus,
                    self.allocation.memory_gib * GIB,
                )
            )
            for other in clashing:
                self.log.warning(
                    "%s holds a core or GPU that %s %s also claims",
                    server_label(self),
                    other.kind,
                    other.id,
                )

    def clear_state(self):
        super().clear_state()
        self.allocation = None
        self.claims.release("server", self.claim_id)
