"""ThinkubeSpawner: kubespawner with a spawn form built from live availability.

The form is JupyterHub's `options_form`, rendered from the menu (the availability service's
documents, `menu.build_menu`) with the project's template; `options_from_form` reads it back.
JupyterHub's `apply_user_options` hook checks the choice against fresh availability before
the start (`menu.check_choice`). The start then goes to where the choice runs
(`servers.py`): a Kubernetes pod, whose traits kubespawner's `load_user_options` hook shapes
from the choice (`shaping.py`) and whose manifest is checked with the feasibility filter
before it is created, or a RunPod pod. Only kubespawner's public surface is used
(docs/architecture.md).
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

from kubespawner import KubeSpawner
from traitlets import Dict, Float, Integer, List, Unicode, Union, default

from thinkube_core.accounting import MalformedObject
from thinkube_core.job_labels import JOB_ID_LABEL
from thinkube_core.kueue import QUEUE_LABEL
from thinkube_core.scheduling import PodRules, node_reason, pod_demand
from thinkube_core.waiting import (
    QUEUE_ENTRY_OPTION,
    WAIT_OPTION,
    is_queue_entry_id,
    wants_wait,
)

from .availability import (
    AvailabilitySettings,
    ServiceUnavailable,
    freeze_long_lived,
    paused_gc,
)
from .claims import storage_problems
from .errors import choice_error, service_unavailable_error, spawn_error
from .form import (
    TEMPLATES,
    menu_profile,
    options_from_formdata,
    options_from_querydata,
    render_form,
    unavailable_profile,
    wait_offers,
    wait_targets,
)
from .instead import cloud_instead, error_html, form_notice_html, instead_link
from .labels import server_label
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
from .runpod.settings import RunPodCloudSettings, missing_public_url_message
from .servers import CloudServer, KubernetesServer, Server
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
from .waiting import wait_in_line


async def _apply_checked_options(spawner: ThinkubeSpawner, user_options: dict) -> None:
    """JupyterHub's apply_user_options hook (5.3+): the choice is checked against fresh
    availability before the spawn starts; the start then uses it."""
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
        # id(built menu): (built menu, freshness, the menu with that freshness)
        self._fresh: OrderedDict[int, tuple[Menu, tuple, Menu]] = OrderedDict()

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

    def with_freshness(self, built: Menu, freshness: dict) -> Menu:
        """`built` with an answer's freshness: the same object while both are the same, so
        that what is made from it (the rendered form) can be kept for it."""
        key = tuple(freshness.items())
        held = self._fresh.get(id(built))
        if held is not None and held[0] is built and held[1] == key:
            self._fresh.move_to_end(id(built))
            return held[2]
        menu = dataclasses.replace(built, **freshness)
        self._fresh[id(built)] = (built, key, menu)
        self._fresh.move_to_end(id(built))
        while len(self._fresh) > self.size:
            self._fresh.popitem(last=False)
        return menu


_built_menus = _BuiltMenus()


class _RenderedForms:
    """The spawn form's HTML for the newest menus, per everything else it is made from (the
    person's last options, their cloud price cap, the storage problems, the template), shared
    by the hub's spawners: while the cluster is unchanged a render is a lookup, instead of
    the profile and the page made again from the menu's 1,000 nodes on the hub's event loop.
    Only a few menus are kept (each holds every node's document)."""

    def __init__(self, menus: int = 4, forms_per_menu: int = 256):
        self.menus, self.forms_per_menu = menus, forms_per_menu
        self._forms: OrderedDict[int, tuple[Menu, OrderedDict[tuple, str]]] = OrderedDict()

    def get(self, menu: Menu, key: tuple) -> str | None:
        held = self._forms.get(id(menu))
        if held is None or held[0] is not menu:
            return None
        self._forms.move_to_end(id(menu))
        return held[1].get(key)

    def put(self, menu: Menu, key: tuple, html: str) -> None:
        held = self._forms.get(id(menu))
        if held is None or held[0] is not menu:
            held = self._forms[id(menu)] = (menu, OrderedDict())
        self._forms.move_to_end(id(menu))
        held[1][key] = html
        while len(held[1]) > self.forms_per_menu:
            held[1].popitem(last=False)
        while len(self._forms) > self.menus:
            self._forms.popitem(last=False)


_rendered_forms = _RenderedForms()
# How long the form says, after a refusal for lack of room, which cloud offer could run it.
ROOM_NOTICE_SECONDS = 300.0
# Form renders that share a request to the service already under way: (menu settings,
# service URL, token) -> the menu it will give.
_menus_under_way: dict[tuple, asyncio.Future[Menu]] = {}


def _options_key(options: dict) -> str | None:
    """The person's last options as a key, or None when they cannot be one."""
    try:
        return json.dumps(options, sort_keys=True)
    except (TypeError, ValueError):
        return None


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
        "Form renders (forms rendered at once share one request) and the check at submit "
        "always fetch.",
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

    # -- Kueue -----------------------------------------------------------------------------

    kueue_local_queue = Unicode(
        "",
        config=True,
        help="A Kueue LocalQueue (in the servers' namespace) that notebook servers queue in, "
        "e.g. `'notebooks'`; empty (the default): no Kueue. Each server's pod is labelled "
        "`kueue.x-k8s.io/queue-name: <queue>` (Kueue's plain-pod integration must be on), "
        "Kueue holds it back with its admission gate until the queue's quota admits it, and "
        "the spawn's progress says its place in the queue. That wait counts neither for "
        "fail-fast nor for start_timeout; kueue_max_wait_seconds limits it.",
    )
    kueue_max_wait_seconds = Float(
        3600.0,
        config=True,
        help="How long a server's pod may wait in the Kueue queue (gated) before the spawn "
        "gives up and deletes it, e.g. `3600`. The hub's start_timeout still limits the rest "
        "of the start. A waiting spawn counts in JupyterHub's concurrent_spawn_limit.",
    )
    kueue_poll_seconds = Float(
        2.0,
        config=True,
        help="How often a queued spawn asks Kueue's visibility API for its place in the "
        "queue, e.g. `2`.",
    )

    # -- the form, the options and the lifecycle, wired ------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return self.render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return options_from_formdata

    def options_from_query(self, query_data):
        """JupyterHub's `/hub/spawn/<user>?opt-where=...` start: the query's options, named as
        user_options (`where`, `gpus`, ...) or as the form's fields."""
        return options_from_querydata(query_data)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _apply_checked_options

    @default("additional_profile_form_template_paths")
    def _default_template_paths(self) -> list[str]:
        return [str(TEMPLATES)]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._menu_cache: tuple[float, Menu] | None = None
        # (when, options, choice) of the check JupyterHub's apply_user_options just made
        self._checked: tuple[float, dict, Choice] | None = None
        self.thinkube_choice: Choice | None = None
        # What the admin configured, before any choice: each spawn starts from these, so
        # one spawn's node or GPUs never leak into the next; the menu shapes its pods from
        # them too.
        self._configured = {
            name: copy.deepcopy(getattr(self, name))
            for name in {*MERGED_TRAITS, *SCHEDULING_TRAITS}
        }
        self._pod_template: PodTemplate | None = None
        # The admin's start_timeout: a start queued in Kueue raises the hub's for its wait.
        self.configured_start_timeout = self.start_timeout
        # (when, options key, form notice) of the last refusal for lack of room that had a
        # cloud offer to start on instead: the form shown next says it.
        self._refused_for_room: tuple[float, str | None, str] | None = None
        # The waiting request this start comes from (its id labels the pod), if any.
        self._queue_entry: str | None = None
        self._configured_labels = dict(self.extra_labels)
        self._cloud_settings = None
        self._backend: Server | None = None
        # kubespawner logs a pod it could not create in full, environment included: the
        # server's token and any secret the admin put there must not reach the log.
        redact_secrets_in(self.log)
        if self.cloud_enabled and not self.cloud_public_url(self.public_hub_url):
            # Said as soon as a spawner exists; cloud offers stay off until it is set.
            self.log.error(missing_public_url_message(type(self).__name__))

    # -- settings --------------------------------------------------------------------------

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

    def cloud_settings(self):
        """The RunPod settings, frozen once (the key is read from its file or environment)."""
        if self._cloud_settings is None:
            self._cloud_settings = self.cloud_config(self.public_hub_url)
        return self._cloud_settings

    def cloud_cap(self) -> float:
        """This person's cloud price cap in USD/h; 0 when cloud GPUs are off for them or
        not set up on this hub (no RunPod key, or no public hub URL for pods to call)."""
        if not self.cloud_enabled:
            return 0.0
        config = self.cloud_settings()
        if config.api_key is None or not config.public_hub_url:
            return 0.0
        return self.user_price_cap()

    # -- the menu and the form -------------------------------------------------------------

    async def menu(self, fresh: bool = False, join: bool = False) -> Menu:
        """The menu from the service's current answer (`fresh`), else from the last one
        while younger than menu_cache_seconds. With `join`, a request to the service for the
        same menu already under way is shared instead of made again: many forms rendered at
        once then make one request, whose answer is at most its own latency older than each
        of them (the check at submit never joins)."""
        if (
            not fresh
            and self._menu_cache
            and time.monotonic() - self._menu_cache[0] < self.menu_cache_seconds
        ):
            return self._menu_cache[1]
        settings = self.menu_settings()
        if join:
            key = (settings, self.availability_url, self.availability_token)
            pending = _menus_under_way.get(key)
            if pending is None:
                pending = _menus_under_way[key] = asyncio.ensure_future(
                    self._current_menu(settings)
                )

                def done(future: asyncio.Future[Menu]) -> None:
                    if _menus_under_way.get(key) is future:
                        del _menus_under_way[key]
                    if not future.cancelled():
                        future.exception()  # each joined render gets it; none is left unread

                pending.add_done_callback(done)
            menu = await asyncio.shield(pending)
        else:
            menu = await self._current_menu(settings)
        self._menu_cache = (time.monotonic(), menu)
        return menu

    async def _current_menu(self, settings: MenuSettings) -> Menu:
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
        return _built_menus.with_freshness(built, answer.freshness)

    async def render_options_form(self, spawner: Any = None) -> str:
        """JupyterHub's options_form: the form with the menu as it is now, the person's last
        choices preselected, what keeps a server from starting at all said above it;
        kubespawner's template settings (`profile_form_template`,
        `additional_profile_form_template_paths`) honoured. The page made for a menu is
        kept for the next render with the same inputs."""
        options = self.user_options or {}
        search_path = tuple(self.additional_profile_form_template_paths)
        try:
            menu = await self.menu(fresh=True, join=True)
        except ServiceUnavailable as err:
            self.log.warning("Spawn form for %s: %s", self.user.name, err)
            return render_form(
                unavailable_profile(str(err)),
                options,
                search_path=search_path,
                template_source=self.profile_form_template,
            )
        problems = await storage_problems(self, self.shared_volumes, fresh=False)
        cap = self.cloud_cap()
        estimates = await self.waiting_estimates(menu)
        options_key = _options_key(options)
        key = (
            options_key,
            cap,
            tuple(problems),
            search_path,
            self.profile_form_template,
            _options_key(estimates or {}),
        )
        html = _rendered_forms.get(menu, key) if options_key is not None else None
        if html is None:
            profile = menu_profile(menu, options, cap, wait_offers(menu, estimates))
            profile["thinkube"]["storage_problems"] = problems
            html = render_form(
                profile,
                options,
                search_path=search_path,
                template_source=self.profile_form_template,
            )
            if options_key is not None:
                _rendered_forms.put(menu, key, html)
        return self._room_notice(options) + html

    # -- if the lab stays full: a cloud offer instead ----------------------------------------

    def offer_cloud_instead(self, error: Any, options: dict, menu: Menu) -> None:
        """When a cloud offer within this person's cap runs the same choice now, the error's
        page (the spawn's progress, the hub's "spawn failed" page) offers it in one click,
        and the form shown next says it too."""
        offer = cloud_instead(options, menu, self.cloud_cap())
        if offer is None:
            return
        link = instead_link(offer, options, self.hub.base_url, self.user.name, self.name)
        error.jupyterhub_html_message = error_html(error.jupyterhub_message, offer, link)
        self._refused_for_room = (
            time.monotonic(),
            _options_key({"profile": PROFILE_SLUG, **options}),
            form_notice_html(offer, link),
        )

    async def offer_cloud_instead_now(self, error: Any) -> None:
        """offer_cloud_instead for this start's choice, with the newest menu at hand."""
        try:
            menu = await self.menu()  # the offers of now, not of the start (queued for long)
        except ServiceUnavailable:
            return
        self.offer_cloud_instead(error, dict(self.user_options or {}), menu)

    def _room_notice(self, options: dict) -> str:
        """The notice of the last refusal for lack of room, for the same options, recent."""
        held = self._refused_for_room
        if held is None:
            return ""
        when, key, notice = held
        if time.monotonic() - when > ROOM_NOTICE_SECONDS:
            self._refused_for_room = None
            return ""
        return notice if key == _options_key({"profile": PROFILE_SLUG, **options}) else ""

    async def waiting_estimates(self, menu: Menu) -> dict | None:
        """The GPU queue's estimates, when the form offers to wait for a full GPU place
        (None: nothing to wait for, waiting off, or the queue cannot say)."""
        if not self.offer_waiting or not wait_targets(menu):
            return None
        return await self.availability.waiting_estimates()

    # -- the check at submit -----------------------------------------------------------------

    async def checked_choice(self) -> Choice:
        """The user's options checked against fresh availability; the spawn error to show
        (nothing started) when they do not fit or are not offered. A choice to wait for a
        full place joins the GPU queue instead (`wait_in_line`); one the queue starts is
        checked as any other, and refused with 409 when it no longer fits (it then waits
        again)."""
        try:
            menu = await self.menu(fresh=True)
        except ServiceUnavailable as err:
            raise service_unavailable_error(err) from None
        options = {"profile": PROFILE_SLUG, **(self.user_options or {})}
        wait = wants_wait(options)
        entry = options.pop(QUEUE_ENTRY_OPTION, None)
        options.pop(WAIT_OPTION, None)
        self._queue_entry = entry if is_queue_entry_id(entry) else None
        try:
            choice = check_choice(options, menu, self.cloud_cap())
        except ChoiceError as err:
            if wait and err.capacity and err.choice is not None and self.offer_waiting:
                raise await self.wait_in_line(err.choice, str(err)) from None
            self.log.info("Rejected spawn options for %s: %s", self.user.name, err)
            error = choice_error(err)
            if err.capacity:
                self.offer_cloud_instead(error, options, menu)
            raise error from None
        if not choice.cloud:
            problems = await storage_problems(self, self.shared_volumes, fresh=True)
            if problems:
                raise spawn_error(
                    " ".join(problems) + " Nothing was started; please tell the hub's admin.",
                    reason="storage",
                    status_code=503,
                )
        self._checked = (time.monotonic(), dict(options), choice)
        return choice

    async def wait_in_line(self, choice: Choice, why: str) -> Exception:
        """Join the GPU queue with this full choice (`waiting.wait_in_line`)."""
        spec = self.pod_template().spec(choice)
        return await wait_in_line(
            self, choice, why, spec, single_machine=False, cloud_cap=self.cloud_cap()
        )

    async def choice_for_this_start(self) -> Choice:
        """The choice JupyterHub's apply_user_options just checked, else a fresh check (an
        admin may have replaced that hook)."""
        options = {"profile": PROFILE_SLUG, **(self.user_options or {})}
        options.pop(QUEUE_ENTRY_OPTION, None)
        options.pop(WAIT_OPTION, None)
        checked, self._checked = self._checked, None
        if (
            checked is not None
            and checked[1] == options
            and time.monotonic() - checked[0] < self.menu_cache_seconds
        ):
            return checked[2]
        return await self.checked_choice()

    # -- kubespawner's hooks, for a Kubernetes pod --------------------------------------------

    async def load_user_options(self) -> None:
        """kubespawner's documented override point, called inside its start: the checked
        choice applied to the pod's traits (there is no profile_list to load)."""
        choice = self.thinkube_choice
        overrides = apply_to_configured(
            spawner_overrides(choice, self.pod_settings()), self._configured
        )
        for name, value in overrides.items():
            setattr(self, name, value)
        # A server the GPU queue started: its pod carries the request's id, so the service
        # counts the pod as the request's (and no longer assumes its room taken).
        entry = {JOB_ID_LABEL: self._queue_entry} if self._queue_entry else {}
        self.extra_labels = {**self._configured_labels, **entry}
        self.log.info(
            "Spawning %s: %s on %s, %s CPU, %s GiB, %d GPU(s)",
            server_label(self),
            choice.image["name"],
            choice.node or choice.placement.label,
            choice.cpu,
            choice.memory_gib,
            choice.gpus,
        )

    async def get_pod_manifest(self):
        """kubespawner's pod, checked with the feasibility filter before it is created: the
        pod we submit, not a model of it, must fit where the check at submit said; with
        kueue_local_queue, labelled for that queue."""
        pod = await self._checked_pod_manifest()
        if self.kueue_local_queue:
            pod.metadata.labels = {
                **(pod.metadata.labels or {}),
                QUEUE_LABEL: self.kueue_local_queue,
            }
        return pod

    async def _checked_pod_manifest(self):
        pod = await super().get_pod_manifest()
        choice = self.thinkube_choice
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
                server_label(self),
                "; ".join(f"{n}: {r}" for n, r in list(reasons.items())[:5]),
            )
            placement = menu.placement(choice.placement.key) or choice.placement
            error = spawn_error(
                no_room_message(placement, menu, choice.cpu, choice.memory_gib, choice.gpus)
                if not fits(placement, demand)
                else "Your server cannot be placed on any node right now. Nothing was started.",
                reason="capacity",
                status_code=409,
            )
            self.offer_cloud_instead(error, choice.as_user_options(), menu)
            raise error
        return pod

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.jobs_env())
        return env

    async def unschedulable_message(self, scheduler_message: str) -> str:
        """The scheduler's reason, and where there is room by our accounting."""
        text = f"The scheduler could not place your server: {scheduler_message}"
        choice = self.thinkube_choice
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

    # -- the lifecycle: the server's, where it runs (servers.py) ---------------------------

    @property
    def backend(self) -> Server:
        """Where this server runs (or ran last): chosen at each start, restored with the
        state; a Kubernetes pod until either says otherwise."""
        if self._backend is None:
            self._backend = KubernetesServer(self)
        return self._backend

    def start(self):
        self._refused_for_room = None  # a new start: the last refusal's offer is past
        # The choice's own key says where it runs; the backend checks the rest.
        where = str((self.user_options or {}).get("where") or "")
        self._backend = (
            CloudServer(self) if where.startswith(CLOUD_PREFIX) else KubernetesServer(self)
        )
        return self._backend.start()

    async def poll(self):
        return await self.backend.poll()

    async def stop(self, now: bool = False):
        await self.backend.stop(now=now)

    async def progress(self):
        async for event in self.backend.progress():
            yield event

    def get_state(self) -> dict:
        return self.backend.get_state()

    def load_state(self, state: dict) -> None:
        self._backend = (
            CloudServer(self, state) if CloudServer.holds(state) else KubernetesServer(self)
        )
        self._backend.load_state(state)

    def clear_state(self) -> None:
        self.backend.clear_state()


# Last: what the hub, kubespawner and this module brought in is in memory now.
freeze_long_lived()
