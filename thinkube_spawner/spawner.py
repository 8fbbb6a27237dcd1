"""ThinkubeSpawner: kubespawner with a spawn form built from live availability.

The form is kubespawner's own mechanism: `profile_list` is a callable that returns one
profile ("thinkube") whose options come from the availability service, rendered with our
template. At start, `load_user_options` fetches fresh availability, checks the choice
(`menu.check_choice`), then applies it to the pod through the pure builders in
`shaping.py`. While the pod waits for a node, the scheduler's events are watched; a
scheduling failure that outlasts a short grace period deletes the pod and fails the spawn
with the scheduler's reason and where there is room.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from kubernetes_asyncio.client import StorageV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner import KubeSpawner
from traitlets import Dict, Float, Integer, List, Unicode, Union, default

from thinkube_core.accounting import MalformedObject
from thinkube_core.scheduling import PodRules, node_reason, pod_demand

from .availability import AvailabilitySettings, ServiceUnavailable, paused_gc
from .errors import choice_error, service_unavailable_error, spawn_error
from .form import TEMPLATES, form_template
from .menu import (
    CLOUD_PREFIX,
    PROFILE_SLUG,
    Choice,
    ChoiceError,
    Menu,
    MenuSettings,
    build_menu,
    check_choice,
    demand_for,
    fits,
    no_room_message,
)
from .redaction import redact_secrets_in
from .runpod.backend import STATE_KEY, CloudStartError, RunPodBackend, spawn_error_for
from .runpod.settings import RunPodCloudSettings, missing_public_url_message
from .shaping import (
    MERGED_TRAITS,
    SCHEDULING_TRAITS,
    PodSettings,
    PodTemplate,
    SharedVolume,
    StorageSettings,
    apply_to_configured,
    spawner_overrides,
)

# Scheduler reasons that waiting will not fix (short of a node being added).
UNSCHEDULABLE_MARKERS = (
    "Insufficient ",
    "didn't match Pod's node affinity/selector",
    "had untolerated taint",
    "Too many pods",
    "persistentvolumeclaim ",  # ... "x" not found
    "unbound immediate PersistentVolumeClaims",
)
# Kubelet events that waiting will not fix either: a volume that cannot be found.
MOUNT_FAILURE_MARKERS = ("not found",)


def _is_lasting_failure(event: dict) -> bool:
    """A scheduler or kubelet event that waiting will not fix."""
    message = event.get("message") or ""
    if event.get("reason") == "FailedScheduling":
        return any(marker in message for marker in UNSCHEDULABLE_MARKERS)
    if event.get("reason") == "FailedMount":
        return any(marker in message for marker in MOUNT_FAILURE_MARKERS)
    return False


class _Claims:
    """Whether the shared claims can be mounted, read from the Kubernetes API and kept a few
    seconds, shared by the hub's spawners: a form render does not read every claim again."""

    MISSING, UNKNOWN, MOUNTABLE = "missing", "unknown", "mountable"
    KEEP_SECONDS = 10.0

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], tuple[float, str]] = {}

    async def state(self, spawner: KubeSpawner, name: str, fresh: bool) -> str:
        """MOUNTABLE, MISSING, UNKNOWN (this hub may not read it), or why it cannot bind."""
        key = (spawner.namespace, name)
        held = self._states.get(key)
        if not fresh and held and time.monotonic() - held[0] < self.KEEP_SECONDS:
            return held[1]
        state = await self._read(spawner, name)
        self._states[key] = (time.monotonic(), state)
        return state

    async def _read(self, spawner: KubeSpawner, name: str) -> str:
        claim = await self._get(
            spawner, spawner.api.read_namespaced_persistent_volume_claim, name, spawner.namespace
        )
        if not isinstance(claim, dict):
            return claim
        phase = (claim.get("status") or {}).get("phase")
        if phase in (None, "Bound"):
            return self.MOUNTABLE if phase else self.UNKNOWN
        if phase != "Pending":
            return f"{phase}, not Bound"
        # A claim of a WaitForFirstConsumer class binds when the first pod using it is
        # scheduled: that pod may be this one.
        storage_class = (claim.get("spec") or {}).get("storageClassName")
        if not storage_class:
            return "Pending, with no storage class to provision it"
        found = await self._get(
            spawner, StorageV1Api(spawner.api.api_client).read_storage_class, storage_class
        )
        if found == self.MISSING:
            return f"Pending: its storage class {storage_class!r} does not exist"
        if not isinstance(found, dict):
            return self.UNKNOWN
        if found.get("volumeBindingMode") == "WaitForFirstConsumer":
            return self.MOUNTABLE
        return "Pending, not Bound"

    @classmethod
    async def _get(cls, spawner: KubeSpawner, read, *args) -> dict | str:
        """The object as raw JSON, MISSING, or UNKNOWN when it cannot be read."""
        try:
            # Unparsed: the raw response, whose status is ours to check.
            response = await read(*args, _preload_content=False)
            if response.status == 404:
                return cls.MISSING
            if response.status != 200:
                spawner.log.warning("Cannot read %s: HTTP %s", args[0], response.status)
                return cls.UNKNOWN
            found = json.loads(await response.read())
            return found if isinstance(found, dict) else cls.UNKNOWN
        except Exception as err:  # the API unreachable, or not JSON: the scheduler will tell
            spawner.log.warning("Cannot read %s: %s", args[0], type(err).__name__)
        return cls.UNKNOWN


_claims = _Claims()


async def _apply_checked_options(spawner: ThinkubeSpawner, user_options: dict) -> None:
    """JupyterHub's apply_user_options hook (5.3+): the choice is checked against fresh
    availability before the spawn starts; kubespawner's start then applies it."""
    await spawner.checked_choice()


class _BuiltMenus:
    """The newest menu per menu settings, with the version of the service's answer it was
    built from, shared by the hub's spawners: while the cluster and catalog are unchanged,
    a form render or a check at submit reuses it (the service answers 304) instead of
    rebuilding it from 1,000 node documents. Menus are not modified after build_menu, so
    sharing them is safe."""

    def __init__(self, size: int = 8):
        self.size = size
        self._menus: OrderedDict[MenuSettings, tuple[str, Menu]] = OrderedDict()

    def get(self, settings: MenuSettings) -> tuple[str, Menu] | None:
        held = self._menus.get(settings)
        if held is not None:
            self._menus.move_to_end(settings)
        return held

    def put(self, settings: MenuSettings, version: str, menu: Menu) -> None:
        self._menus[settings] = (version, menu)
        self._menus.move_to_end(settings)
        while len(self._menus) > self.size:
            self._menus.popitem(last=False)


_built_menus = _BuiltMenus()


class ThinkubeSpawner(AvailabilitySettings, RunPodCloudSettings, KubeSpawner):
    """KubeSpawner with the live spawn form; a RunPod offer chosen in the same form runs on
    RunPod instead, through the same backend as RemoteRunPodSpawner (the `cloud_*` and
    `runpod_*` settings are shared with it)."""

    # -- the availability service (AvailabilitySettings) and its answers -----------------

    menu_cache_seconds = Float(
        10.0,
        config=True,
        help="How long the availability fetched by the check at submit is reused when "
        "kubespawner evaluates the profile list again during the same start, e.g. `10`. "
        "Form renders and the check at submit always fetch.",
    )

    # -- the form ------------------------------------------------------------------------

    cpu_choices = List(
        Float(), [1, 2, 4, 8, 16, 32], config=True, help="CPU limits offered, e.g. `[1, 2, 4, 8]`."
    )
    memory_choices = List(
        Integer(),
        [2, 4, 8, 16, 32, 64, 128],
        config=True,
        help="Memory limits offered in GiB, e.g. `[4, 16, 64]`.",
    )
    gpu_choices = List(
        Integer(), [0, 1, 2, 4, 8], config=True, help="GPU counts offered, e.g. `[0, 1, 2]`."
    )
    cpu_guarantee_ratio = Float(
        0.5,
        config=True,
        help="CPU guarantee (request) as a fraction of the chosen limit, e.g. `0.5`.",
    )
    mem_guarantee_ratio = Float(
        1.0,
        config=True,
        help="Memory guarantee (request) as a fraction of the chosen limit, e.g. `1.0`.",
    )
    max_nodes_listed = Integer(
        50,
        config=True,
        help="Most specific nodes listed in the form (the roomiest first); 'any node with a "
        "free <model>' is always offered. E.g. `50`.",
    )
    tolerated_gpu_taints = List(
        Unicode(),
        ["nvidia.com/gpu"],
        config=True,
        help="Taint keys of GPU nodes that servers placed there tolerate (any value and "
        "effect), e.g. `['nvidia.com/gpu']`. Every other taint must be tolerated by the "
        "admin's own `tolerations` (z2jh: `singleuser.extraTolerations`) for a node to be "
        "offered.",
    )

    # -- storage -------------------------------------------------------------------------

    shared_volumes = List(
        Dict(),
        [
            {"claim": "thinkube-notebooks", "mount_path": "/home/jovyan/notebooks"},
            {"claim": "thinkube-datasets", "mount_path": "/datasets"},
            {"claim": "thinkube-models", "mount_path": "/models"},
        ],
        config=True,
        help="ReadWriteMany claims mounted into every server: dicts with `claim`, "
        "`mount_path` and optional `read_only`, e.g. "
        "`[{'claim': 'thinkube-datasets', 'mount_path': '/datasets', 'read_only': True}]`. "
        "`[]` mounts none.",
    )
    scratch_size_limit = Union(
        [Unicode(), Integer()],
        default_value="100Gi",
        allow_none=True,
        config=True,
        help="sizeLimit of the emptyDir scratch volume, e.g. `'50Gi'`; None for no scratch volume.",
    )
    scratch_path = Unicode(
        "/home/jovyan/scratch", config=True, help="Where scratch is mounted, e.g. `/scratch`."
    )

    # -- failing fast --------------------------------------------------------------------

    fail_fast_seconds = Float(
        10.0,
        config=True,
        help="How long the scheduler may report a pod unschedulable (insufficient resources, "
        "unmatched affinity) before the spawn fails with its reason, instead of waiting "
        "out start_timeout. E.g. `10`; 0 turns fail-fast off.",
    )
    scale_up_grace_seconds = Float(
        300.0,
        config=True,
        help="Extra wait when a cluster autoscaler reports a scale-up for the pod "
        "(event TriggeredScaleUp), e.g. `300`.",
    )

    # -- profile_list wiring -------------------------------------------------------------

    @default("profile_list")
    def _default_profile_list(self):
        return self._thinkube_profile_list

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _apply_checked_options

    @default("additional_profile_form_template_paths")
    def _default_template_paths(self) -> list[str]:
        return [str(TEMPLATES)]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._menu_cache: tuple[float, Menu] | None = None
        self._loading_options = False
        # (when, options, choice) of the check JupyterHub's apply_user_options just made
        self._checked: tuple[float, dict, Choice] | None = None
        # What the admin configured, before any choice: each spawn starts from these, so
        # one spawn's node or GPUs never leak into the next; the menu shapes its pods from
        # them too.
        self._configured = {
            name: copy.deepcopy(getattr(self, name))
            for name in {*MERGED_TRAITS, *SCHEDULING_TRAITS}
        }
        self._pod_template: PodTemplate | None = None
        # kubespawner logs a pod it could not create in full, environment included: the
        # server's token and any secret the admin put there must not reach the log.
        redact_secrets_in(self.log)
        if self.cloud_enabled and not self.cloud_public_url(self.public_hub_url):
            # Said as soon as a spawner exists; cloud offers stay off until it is set.
            self.log.error(missing_public_url_message(type(self).__name__))

    def menu_settings(self) -> MenuSettings:
        return MenuSettings(
            cpu_choices=tuple(self.cpu_choices),
            memory_choices_gib=tuple(self.memory_choices),
            gpu_choices=tuple(self.gpu_choices),
            cpu_guarantee_ratio=self.cpu_guarantee_ratio,
            mem_guarantee_ratio=self.mem_guarantee_ratio,
            max_nodes_listed=self.max_nodes_listed,
            pod=self.pod_template(),
        )

    def pod_template(self) -> PodTemplate:
        """How a choice becomes this hub's pod: the admin's configuration, as at spawn."""
        if self._pod_template is None:
            self._pod_template = PodTemplate.of(self._configured, self.pod_settings())
        return self._pod_template

    def pod_settings(self) -> PodSettings:
        shared = tuple(
            SharedVolume(v["claim"], v["mount_path"], bool(v.get("read_only")))
            for v in self.shared_volumes
        )
        limit = self.scratch_size_limit
        return PodSettings(
            StorageSettings(
                shared,
                self.scratch_path,
                str(limit) if limit else None,
                bool(shared) or bool(limit),
            ),
            hub_origin=self.hub_origin() if self.cloud_enabled else None,
            gpu_taint_keys=tuple(self.tolerated_gpu_taints),
        )

    def hub_origin(self) -> str | None:
        """The hub's public origin (`https://hub.example.org`), when known."""
        public = self.cloud_public_url(self.public_hub_url)
        if not public:
            return None
        parts = urlsplit(public)
        return f"{parts.scheme}://{parts.netloc}"

    async def menu(self, fresh: bool = False) -> Menu:
        if (
            not fresh
            and self._menu_cache
            and time.monotonic() - self._menu_cache[0] < self.menu_cache_seconds
        ):
            return self._menu_cache[1]
        settings = self.menu_settings()
        held = _built_menus.get(settings)
        answer = await self.availability.fetch(held[0] if held else None)
        if held and answer.unchanged:
            built = held[1]
        else:
            with paused_gc():
                data = answer.document()
                try:
                    built = build_menu(
                        data["nodes"],
                        data["summary"],
                        data["images"],
                        settings,
                        answer.freshness,
                        data.get("cloud"),
                    )
                except MalformedObject as err:
                    self.log.error("The configured pod cannot be scheduled: %s", err)
                    raise ServiceUnavailable(
                        f"This hub's server settings cannot be read ({err}); please tell the "
                        "hub's admin."
                    ) from None
                del data  # what the menu does not keep is freed here, by reference counting
            if answer.version:
                _built_menus.put(settings, answer.version, built)
        menu = dataclasses.replace(built, **answer.freshness)
        self._menu_cache = (time.monotonic(), menu)
        return menu

    async def _thinkube_profile_list(self, spawner: KubeSpawner) -> list[dict]:
        """kubespawner's callable profile_list: one profile whose options are the menu."""
        from .form import menu_profile, unavailable_profile

        try:
            # A form render always fetches; kubespawner's second evaluation, inside
            # load_user_options, reuses what the check at submit just fetched.
            menu = await self.menu(fresh=not self._loading_options)
        except ServiceUnavailable as err:
            self.log.warning("Spawn form for %s: %s", self.user.name, err)
            return [unavailable_profile(str(err))]
        profile = menu_profile(menu, self.user_options or {}, self.cloud_cap())
        if not self._loading_options:
            profile["thinkube"]["storage_problems"] = await self.storage_problems(fresh=False)
        return [profile]

    # -- shared storage ------------------------------------------------------------------

    async def storage_problems(self, fresh: bool) -> list[str]:
        """Why the configured shared claims cannot be mounted (missing, or not Bound), in
        words; empty when they can, or when this hub may not read claims (then the
        scheduler's own message fails the spawn fast)."""
        problems = []
        for volume in self.shared_volumes:
            name = str(volume.get("claim") or "")
            state = await _claims.state(self, name, fresh)
            if state == _Claims.MISSING:
                problems.append(
                    f"The shared storage claim {name!r} does not exist in namespace "
                    f"{self.namespace!r}."
                )
            elif state not in (_Claims.MOUNTABLE, _Claims.UNKNOWN):
                problems.append(
                    f"The shared storage claim {name!r} is {state}: nothing can mount it."
                )
        return problems

    def _render_options_form(self, profile_list: list[dict]) -> str:
        """kubespawner's form rendering, with the jinja environment and the compiled template
        kept for the process: kubespawner builds both anew for every render, which costs more
        than rendering the page."""
        profile_list = self._get_initialized_profile_list(profile_list)
        template = form_template(
            tuple(self.additional_profile_form_template_paths), self.profile_form_template
        )
        # menu_profile preselects only what is still offered; an answer kubespawner would
        # not validate is not passed on (as kubespawner does).
        user_options = self.user_options or {}
        if user_options:
            try:
                self._validate_user_options(profile_list)
            except ValueError:
                user_options = {}
        return template.render(profile_list=profile_list, user_options=user_options)

    # -- start ---------------------------------------------------------------------------

    async def checked_choice(self) -> Choice:
        """The user's options checked against fresh availability; the spawn error to show
        (nothing started) when they do not fit or are not offered."""
        try:
            menu = await self.menu(fresh=True)
        except ServiceUnavailable as err:
            raise service_unavailable_error(err) from None
        options = {"profile": PROFILE_SLUG, **(self.user_options or {})}
        try:
            choice = check_choice(options, menu, self.cloud_cap())
        except ChoiceError as err:
            self.log.info("Rejected spawn options for %s: %s", self.user.name, err)
            raise choice_error(err) from None
        if not choice.cloud:
            problems = await self.storage_problems(fresh=True)
            if problems:
                raise spawn_error(
                    " ".join(problems) + " Nothing was started; please tell the hub's admin.",
                    reason="storage",
                    status_code=503,
                )
        self._checked = (time.monotonic(), dict(options), choice)
        return choice

    async def _choice_for_this_start(self) -> Choice:
        """The choice JupyterHub's apply_user_options just checked, else a fresh check."""
        options = {"profile": PROFILE_SLUG, **(self.user_options or {})}
        checked, self._checked = self._checked, None
        if (
            checked is not None
            and checked[1] == options
            and time.monotonic() - checked[0] < self.menu_cache_seconds
        ):
            return checked[2]
        return await self.checked_choice()

    async def load_user_options(self) -> None:
        """Check the choice against fresh availability, then shape the pod from it."""
        choice = await self._choice_for_this_start()
        if choice.cloud:  # the form's cloud choice reached kubespawner's start: refuse
            raise spawn_error(
                "A cloud GPU cannot be started as a Kubernetes pod.", reason="invalid-choice"
            )
        # The menu's own keys, which kubespawner then finds in the profile's choices.
        self.user_options = choice.as_user_options()
        self._loading_options = True
        try:
            await super().load_user_options()
        finally:
            self._loading_options = False
        overrides = apply_to_configured(
            spawner_overrides(choice, self.pod_settings()), self._configured
        )
        for name, value in overrides.items():
            setattr(self, name, value)
        self.thinkube_choice = choice
        self.log.info(
            "Spawning %s: %s on %s, %s CPU, %s GiB, %d GPU(s)",
            self._log_name,
            choice.image["name"],
            choice.node or choice.placement.label,
            choice.cpu,
            choice.memory_gib,
            choice.gpus,
        )

    async def get_pod_manifest(self):
        """kubespawner's pod, checked with the feasibility filter before it is created: the
        pod we submit, not a model of it, must fit where the check at submit said."""
        pod = await super().get_pod_manifest()
        choice = getattr(self, "thinkube_choice", None)
        if choice is None or self._menu_cache is None:
            return pod
        spec = self.api.api_client.sanitize_for_serialization(pod)["spec"]
        menu = self._menu_cache[1]
        try:
            rules, demand = PodRules.of_pod_spec(spec), pod_demand(spec)
        except MalformedObject as err:
            raise spawn_error(
                f"This hub's server settings cannot be scheduled ({err}); please tell the "
                "hub's admin. Nothing was started.",
                reason="configuration",
                status_code=503,
            ) from None
        names = [choice.node] if choice.node else list(menu.nodes)
        reasons = {n: node_reason(rules, demand, menu.nodes[n]) for n in names if n in menu.nodes}
        if not any(reason is None for reason in reasons.values()):
            self.log.warning(
                "The pod for %s fits no node although its choice did: %s",
                self._log_name,
                "; ".join(f"{n}: {r}" for n, r in list(reasons.items())[:5]),
            )
            placement = menu.placement(choice.placement.key) or choice.placement
            raise spawn_error(
                no_room_message(placement, menu, choice.cpu, choice.memory_gib, choice.gpus)
                if not fits(placement, demand)
                else "Your server cannot be placed on any node right now. Nothing was started.",
                reason="capacity",
                status_code=409,
            )
        return pod

    def start(self):
        if str((self.user_options or {}).get("where") or "").startswith(CLOUD_PREFIX):
            self._cloud_starting = True  # now: progress() may be asked before the task runs
            self._start_future = asyncio.ensure_future(self._start_on_cloud())
            return self._start_future
        return asyncio.ensure_future(self._start_or_fail_fast(super().start()))

    async def _start_or_fail_fast(self, start_future: asyncio.Future):
        if not self.fail_fast_seconds:
            return await self._refusals_in_words(start_future)
        watcher = asyncio.ensure_future(self._watch_scheduling())
        try:
            done, _ = await asyncio.wait(
                {start_future, watcher}, return_when=asyncio.FIRST_COMPLETED
            )
            if start_future in done:
                return await self._refusals_in_words(start_future)
            failure = watcher.result()
        finally:
            watcher.cancel()
        start_future.cancel()
        await asyncio.gather(start_future, return_exceptions=True)
        await self.stop(now=True)
        raise spawn_error(
            await self._unschedulable_message(failure), reason="unschedulable", status_code=503
        )

    async def _refusals_in_words(self, start_future: asyncio.Future):
        """kubespawner's start; an error answer of the Kubernetes API becomes a message for
        the person, with whatever was made of the server deleted."""
        try:
            return await start_future
        except ApiException as err:
            self.log.error(
                "The Kubernetes API refused to start %s: HTTP %s %s",
                self._log_name,
                err.status,
                err.reason,
            )
            await self.stop(now=True)
            raise spawn_error(
                f"The cluster refused to create your server (HTTP {err.status} from the "
                "Kubernetes API); nothing was left behind; try again in a moment.",
                reason="cluster",
                status_code=503,
            ) from None

    def _scheduling_events(self) -> list[dict]:
        return list(self.events)  # kubespawner's: this pod's events since this start

    async def _watch_scheduling(self) -> str:
        """Return the scheduler's message once the pod has been unschedulable for too long."""
        first_seen: float | None = None
        while True:
            await asyncio.sleep(0.25)
            pod = (
                self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}")
                if self.pod_reflector
                else None
            )
            if pod is not None and (pod.get("spec") or {}).get("nodeName"):
                # Scheduled: the rest is kubespawner's; wait to be cancelled when start ends.
                await asyncio.Event().wait()
            events = self._scheduling_events()
            failures = [e for e in events if _is_lasting_failure(e)]
            if not failures:
                continue
            latest = failures[-1]
            if first_seen is None:
                first_seen = time.monotonic()
            grace = self.fail_fast_seconds
            if any(e.get("reason") == "TriggeredScaleUp" for e in events):
                grace += self.scale_up_grace_seconds
            if time.monotonic() - first_seen >= grace:
                return latest["message"]

    async def _unschedulable_message(self, scheduler_message: str) -> str:
        text = f"The scheduler could not place your server: {scheduler_message}"
        choice = getattr(self, "thinkube_choice", None)
        if choice is None:
            return text
        try:
            menu = await self.menu(fresh=True)
        except ServiceUnavailable:
            return text
        placement = menu.placement(choice.placement.key)
        amounts = (choice.cpu, choice.memory_gib, choice.gpus)
        if placement is None or fits(placement, demand_for(menu.settings, placement, *amounts)):
            return text  # by our accounting it fits: the reason is the scheduler's alone
        return f"{text} {no_room_message(placement, menu, *amounts)}"

    # -- cloud GPUs (RunPod) ---------------------------------------------------------------

    _cloud_backend: RunPodBackend | None = None
    _cloud_state: dict = {}
    _cloud_starting = False

    @property
    def cloud(self) -> RunPodBackend:
        """The RunPod backend for this server (built on first use, with the saved state)."""
        if self._cloud_backend is None:
            self._cloud_backend = RunPodBackend(
                self, self.cloud_config(self.public_hub_url), type(self).__name__
            )
            self._cloud_backend.load_state(self._cloud_state)
        return self._cloud_backend

    @property
    def on_cloud(self) -> bool:
        """Whether this server is (or was last) a RunPod pod, not a Kubernetes one."""
        if self._cloud_backend is not None:
            return bool(self._cloud_backend.pod_id)
        return bool(self._cloud_state.get(STATE_KEY))

    def cloud_cap(self) -> float:
        """This person's cloud price cap in USD/h; 0 when cloud GPUs are off for them or
        not set up on this hub (no RunPod key, or no public hub URL for pods to call)."""
        if not self.cloud_enabled:
            return 0.0
        config = self.cloud.config
        if config.api_key is None or not config.public_hub_url:
            return 0.0
        return self.user_price_cap()

    async def _start_on_cloud(self) -> str:
        """A RunPod offer from the form: checked like any choice, then rented. The offer
        chosen first; the same GPU in RunPod's other cloud next, if within the cap."""
        try:
            choice = await self._choice_for_this_start()
            self.user_options = choice.as_user_options()
            self.thinkube_choice = choice
            chosen = choice.placement.offer
            menu = await self.menu()
            cap = self.cloud_cap()
            alike = [
                p.offer
                for p in menu.placements
                if p.offer is not None
                and p.offer != chosen
                and p.offer.gpu_type_id == chosen.gpu_type_id
                and p.offer.gpu_count == chosen.gpu_count
                and (p.offer.price(choice.spot) or cap + 1) <= cap
            ]
            image = (choice.image.get("metadata") or {}).get("cloud_image") or self.cloud_image
            self.log.info(
                "Spawning %s on RunPod: %s (%s), image %s",
                self._log_name,
                chosen.key,
                "spot" if choice.spot else "on demand",
                image,
            )
            try:
                return await self.cloud.start([chosen, *alike], image, spot=choice.spot)
            except CloudStartError as err:
                raise spawn_error_for(err) from None
        finally:
            self._cloud_starting = False

    async def poll(self):
        if self.on_cloud:
            return await self.cloud.poll()
        return await super().poll()

    async def stop(self, now: bool = False):
        if self.on_cloud:
            await self.cloud.stop()
            return
        await super().stop(now=now)

    def get_state(self) -> dict:
        state = super().get_state()
        if self._cloud_backend is not None:
            state.update(self._cloud_backend.get_state())
        elif self._cloud_state.get(STATE_KEY):
            state.update({k: v for k, v in self._cloud_state.items() if k.startswith("runpod_")})
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        # Runs while the spawner is built: the backend is made on first use, from this.
        self._cloud_state = dict(state)
        if self._cloud_backend is not None:
            self._cloud_backend.load_state(state)

    def clear_state(self) -> None:
        super().clear_state()
        self._cloud_state = {}
        if self._cloud_backend is not None:
            self._cloud_backend.clear_state()

    async def progress(self):
        """Real steps: waiting for a node, scheduled, pulling, starting, with the events;
        for a cloud server, the RunPod backend's steps."""
        from .form import progress_message

        if self._cloud_starting:
            async for event in self.cloud.progress():
                yield event
            return

        await self._start_watching_events()
        yield {"progress": 5, "message": "Waiting for a node"}
        seen: set[tuple] = set()
        percent = 10
        # JupyterHub stops reading once the spawn ends.
        while True:
            for event in self._scheduling_events():
                key = (event["metadata"].get("uid"), event.get("count"))
                if key in seen:
                    continue
                seen.add(key)
                percent = min(95, percent + 10)
                yield {
                    "progress": percent,
                    "message": progress_message(event, getattr(self, "thinkube_choice", None)),
                }
            await asyncio.sleep(0.5)
