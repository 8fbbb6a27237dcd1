"""form.menu_profile / unavailable_profile / progress_message, and the template rendered the
way kubespawner renders it (KubeSpawner._render_options_form)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader

from tests.kubesim.generator import make_node
from tests.spawner_unit.cluster import (
    A100,
    FakeAvailability,
    apply_options,
    images,
    lab_menu,
    lab_pods,
    make_spawner,
    pod,
)
from thinkube_spawner.form import menu_profile, progress_message, unavailable_profile
from thinkube_spawner.menu import MenuSettings, build_menu, check_choice
from thinkube_spawner.spawner import TEMPLATES

FIELDS = [
    f"profile-option-thinkube--{name}" for name in ("image", "where", "cpu", "memory", "gpus")
]
FRESH = {"generated_at": "2026-01-02T03:04:05Z", "stale": False, "age_seconds": 3.2}
STALE = {"generated_at": "2026-01-02T03:03:00Z", "stale": True, "age_seconds": 67.6}


def render(profile_list: list[dict], user_options: dict | None = None) -> str:
    """What KubeSpawner._render_options_form does (kubespawner 7.1), step by step."""
    loader = ChoiceLoader(
        [FileSystemLoader([str(TEMPLATES)]), PackageLoader("kubespawner", "templates")]
    )
    env = Environment(loader=loader)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    return env.get_template("form.html").render(
        profile_list=profile_list, user_options=user_options
    )


class Form(HTMLParser):
    """The parts of the rendered form a browser would submit or show."""

    def __init__(self, html: str):
        super().__init__()
        self.selects: dict[str, list[dict]] = {}
        self.hidden: dict[str, str] = {}
        self.ids: dict[str, str] = {}  # element id -> its text
        self.scripts: dict[str, str] = {}
        self._select: str | None = None
        self._group: str | None = None
        self._option: dict | None = None
        self._text_of: list[tuple[str | None, list[str]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "select":
            self._select = a["name"]
            self.selects[self._select] = []
        elif tag == "optgroup":
            self._group = a["label"]
        elif tag == "option":
            self._option = {
                "value": a["value"],
                "selected": "selected" in a,
                "disabled": "disabled" in a,
                "group": self._group,
                "title": a.get("title"),
                "text": "",
            }
            self.selects[self._select].append(self._option)
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a["value"]
        if tag in ("p", "script"):  # text-bearing elements, by id (None: not recorded)
            self._text_of.append((a.get("id"), []))

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "optgroup":
            self._group = None
        elif tag == "option":
            self._option = None
        if self._text_of and tag in ("p", "script"):
            element, parts = self._text_of.pop()
            text = "".join(parts)
            if element is not None:
                (self.scripts if tag == "script" else self.ids)[element] = (
                    text.strip() if tag == "p" else text
                )

    def handle_data(self, data):
        if self._option is not None:
            self._option["text"] += data
        for _, parts in self._text_of:
            parts.append(data)

    def values(self, field: str, **where) -> list[str]:
        return [o["value"] for o in self.selects[field] if all(o[k] == v for k, v in where.items())]

    def selected(self) -> dict[str, str]:
        return {
            name: next(o["value"] for o in options if o["selected"])
            for name, options in self.selects.items()
        }

    def groups(self) -> list[str]:
        seen = []
        for option in self.selects["profile-option-thinkube--where"]:
            if option["group"] not in seen:
                seen.append(option["group"])
        return seen


def choices(profile: dict, option: str) -> dict[str, dict]:
    return profile["profile_options"][option]["choices"]


def defaults(profile: dict) -> dict[str, str]:
    return {
        name: next(key for key, c in option["choices"].items() if c["default"])
        for name, option in profile["profile_options"].items()
    }


def disabled(profile: dict, option: str) -> list[str]:
    return [key for key, c in choices(profile, option).items() if c.get("disabled")]


@pytest.fixture
def menu():
    return lab_menu(freshness=FRESH)


# --- the profile -------------------------------------------------------------------------


def test_the_profile_has_the_five_options_and_the_forms_defaults(menu):
    profile = menu_profile(menu, {})
    assert (profile["slug"], profile["display_name"], profile["default"]) == (
        "thinkube",
        "Thinkube",
        True,
    )
    assert list(profile["profile_options"]) == ["image", "where", "cpu", "memory", "gpus"]
    assert defaults(profile) == {
        "image": "scipy",
        "where": "cpu",
        "cpu": "2",
        "memory": "8",
        "gpus": "0",
    }
    assert list(choices(profile, "image")) == ["scipy", "minimal", "pytorch-cuda"]
    assert choices(profile, "image")["pytorch-cuda"]["gpu_required"] is True
    assert choices(profile, "image")["pytorch-cuda"]["display_name"] == "PyTorch (CUDA 12)"
    assert list(choices(profile, "cpu")) == ["1", "2", "4", "8", "16", "32"]
    assert [c["display_name"] for c in choices(profile, "cpu").values()][:2] == ["1 CPU", "2 CPUs"]
    assert list(choices(profile, "memory")) == ["2", "4", "8", "16", "32", "64", "128"]
    assert choices(profile, "memory")["16"]["display_name"] == "16 GiB"
    assert {k: c["display_name"] for k, c in choices(profile, "gpus").items()} == {
        "0": "No GPU",
        "1": "1 GPU",
        "2": "2 GPUs",
        "4": "4 GPUs",
        "8": "8 GPUs",
    }
    where = choices(profile, "where")
    assert list(where) == [p.key for p in menu.placements]
    assert where["node:gpu-node-3"] == {
        "display_name": "gpu-node-3: 12/32 CPU, 40/127 GiB, 1/2 × NVIDIA GeForce RTX 4090 free",
        "default": False,
        "disabled": False,
        "reason": None,
        "group": "Nodes with NVIDIA GeForce RTX 4090",
        "kind": "node",
    }
    assert disabled(profile, "where") == ["gpu:nvidia-l4", "node:gpu-l4", "node:infra-1"]
    # every disabled choice says why
    assert {k: c["reason"] for k, c in where.items() if c["disabled"]} == {
        "gpu:nvidia-l4": "full (gpu-l4: needs 0.5 CPU, 0 free)",
        "node:gpu-l4": "needs 0.5 CPU, 0 free",
        "node:infra-1": "tainted dedicated=infra:NoSchedule, not tolerated",
    }
    assert choices(profile, "gpus")["8"]["reason"] == "no node has room"
    assert profile["thinkube"]["room_notes"] == [
        "8 GPUs: the largest free block is 4 (NVIDIA A100 SXM4 80GB) on gpu-b."
    ]


def test_choices_that_fit_nowhere_are_disabled():
    # One node with 12 CPU and 40 GiB free, no GPUs. With the default ratios a server asks
    # for half its CPUs and all of its memory.
    small = lab_menu(nodes=[make_node("cpu-node-1", 16, 64, None, 1)], pods=lab_pods())
    profile = menu_profile(small, {})
    assert disabled(profile, "cpu") == ["32"]
    assert disabled(profile, "memory") == ["64", "128"]
    assert disabled(profile, "gpus") == ["1", "2", "4", "8"]
    assert disabled(profile, "where") == []
    # in the lab the largest free GPU count on one node is 4 (gpu-b)
    assert disabled(menu_profile(lab_menu(), {}), "gpus") == ["8"]
    # ratios are part of "fits": at a CPU ratio of 1.0, 16 CPUs no longer fit either
    strict = lab_menu(
        nodes=[make_node("cpu-node-1", 16, 64, None, 1)],
        pods=lab_pods(),
        settings=MenuSettings(cpu_guarantee_ratio=1.0),
    )
    assert disabled(menu_profile(strict, {}), "cpu") == ["16", "32"]


def test_the_last_choices_are_preselected(menu):
    last = {
        "profile": "thinkube",
        "image": "pytorch-cuda",
        "where": "node:gpu-b",
        "cpu": "8",
        "memory": "32",
        "gpus": "2",
    }
    assert defaults(menu_profile(menu, last)) == {
        "image": "pytorch-cuda",
        "where": "node:gpu-b",
        "cpu": "8",
        "memory": "32",
        "gpus": "2",
    }
    # what kubespawner keeps from a REST call: numbers, not strings
    assert defaults(
        menu_profile(
            menu, {"cpu": 4, "memory": 16, "gpus": 1, "where": "gpu:nvidia-a100-sxm4-80gb"}
        )
    ) == {
        "image": "scipy",
        "where": "gpu:nvidia-a100-sxm4-80gb",
        "cpu": "4",
        "memory": "16",
        "gpus": "1",
    }


def test_last_choices_that_are_gone_or_full_fall_back_to_what_is_offered(menu):
    gone = {"image": "retired", "where": "node:vanished", "cpu": "3", "memory": "9", "gpus": "-1"}
    assert defaults(menu_profile(menu, gone)) == {
        "image": "scipy",
        "where": "cpu",
        "cpu": "2",
        "memory": "8",
        "gpus": "0",
    }
    # a disabled option is not submitted by a browser: never preselect one
    assert defaults(menu_profile(menu, {"where": "node:gpu-l4"}))["where"] == "cpu"
    small = lab_menu(nodes=[make_node("cpu-node-1", 16, 64, None, 1)], pods=lab_pods())
    assert defaults(menu_profile(small, {"cpu": "32", "memory": "128", "gpus": "2"})) == {
        "image": "scipy",
        "where": "cpu",
        "cpu": "16",
        "memory": "32",
        "gpus": "0",
    }


def test_a_gpu_only_cluster_preselects_a_gpu_model_with_one_gpu():
    menu = lab_menu(nodes=[make_node("gpu-1", 64, 512, A100, 1)], pods=[])
    profile = menu_profile(menu, {})
    assert choices(profile, "where")["cpu"]["disabled"] is True
    assert defaults(profile) == {
        "image": "scipy",
        "where": "gpu:nvidia-a100-sxm4-80gb",
        "cpu": "2",
        "memory": "8",
        "gpus": "1",
    }
    # what a browser without JavaScript submits is a valid choice
    submitted = {"profile": "thinkube", **defaults(profile)}
    assert check_choice(submitted, menu).placement.key == "gpu:nvidia-a100-sxm4-80gb"


def test_the_page_data_lets_the_browser_narrow_the_choices(menu):
    data = menu_profile(menu, {})["thinkube"]
    assert {k: data[k] for k in ("generated_at", "stale", "age_seconds", "nodes_hidden")} == {
        "generated_at": "2026-01-02T03:04:05Z",
        "stale": False,
        "age_seconds": 3.2,
        "nodes_hidden": 0,
    }
    assert data["images"]["pytorch-cuda"] == {
        "gpu_required": True,
        "cpu_limit": 8,
        "mem_limit": "32Gi",
        "mem_limit_bytes": 32 * 1024**3,
        "cloud_image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
    }
    # the server container's requests per value, in scheduler units (ratios applied)
    assert data["units"] == {
        "cpu": {"1": 500, "2": 1000, "4": 2000, "8": 4000, "16": 8000, "32": 16000},
        "memory": {v: int(v) * 1024**3 for v in ("2", "4", "8", "16", "32", "64", "128")},
    }
    assert list(data["placements"]) == [p.key for p in menu.placements]
    assert data["placements"]["gpu:nvidia-a100-sxm4-80gb"] == {
        "kind": "gpu",
        "gpu_resource": "nvidia.com/gpu",
        # gpu-a (55.9 CPU, 447 GiB, 0 GPUs free) fits nothing gpu-b does not: left out.
        "frontier": [
            {
                "node": "gpu-b",
                "free": {
                    "cpu": 63900,
                    "memory": 511 * 1024**3,
                    "nvidia.com/gpu": 4,
                },
            }
        ],
        # nothing configured beside the server container: the demand is the choice's own
        "add": {"cpu": 0, "memory": 0, "nvidia.com/gpu": 0},
        "floor": {},
    }
    assert data["placements"]["cpu"]["frontier"] == [
        {"node": "cpu-node-1", "free": {"cpu": 12000, "memory": 40 * 1024**3}}
    ]
    json.dumps(data)  # JSON-ready as it is


async def test_the_page_data_carries_what_the_hubs_pod_adds():
    """An admin's extra container and init container count in every choice, on the page and
    in what the server greys out."""
    spawner = make_spawner(
        extra_containers=[
            {
                "name": "proxy",
                "image": "nginx:1.27",
                "resources": {"requests": {"cpu": "250m", "memory": "10Gi"}},
            }
        ],
        init_containers=[
            {"name": "warm", "image": "busybox:1.36", "resources": {"requests": {"memory": "20Gi"}}}
        ],
    )
    small = lab_menu(
        nodes=[make_node("cpu-node-1", 16, 64, None, 1)],
        pods=lab_pods(),
        settings=spawner.menu_settings(),
    )
    profile = menu_profile(small, {})
    cpu = profile["thinkube"]["placements"]["cpu"]
    assert (cpu["add"]["cpu"], cpu["add"]["memory"]) == (250, 10 * 1024**3)
    assert cpu["floor"]["memory"] == 20 * 1024**3
    # 40 GiB are free: 32 GiB for the server and 10 for the proxy no longer fit
    assert disabled(profile, "memory") == ["32", "64", "128"]
    assert profile["thinkube"]["room_notes"][1] == (
        "32 GiB: at most 40 GiB free on one node (cpu-node-1)."
    )


def test_the_page_data_keeps_only_rows_no_other_row_beats():
    """At 1,000 nodes the page carries the few undominated rows, and still answers every
    "does it fit" exactly as the full list of nodes would."""
    from tests.spawner_unit.test_menu import big_cluster
    from thinkube_core.scheduling import rules_reason
    from thinkube_spawner.menu import pod_for

    node_docs, summary = big_cluster()
    menu = build_menu(node_docs, summary, images(), MenuSettings())
    data = menu_profile(menu, {})["thinkube"]
    for placement in menu.placements:
        kept = data["placements"][placement.key]["frontier"]
        dims = list(kept[0]["free"]) if kept else []
        gpus = 1 if placement.kind == "gpu" else 0
        rules = pod_for(menu.settings, placement, 1, 2, gpus).rules
        taking = [d for d in node_docs if rules_reason(rules, d) is None and d["free"]["pods"] > 0]
        assert len(taking) == placement.taking or placement.kind == "node"
        for node in taking:
            assert any(all(row["free"][d] >= node["free"].get(d, 0) for d in dims) for row in kept)
    assert len(data["placements"]["cpu"]["frontier"]) < 50


def test_unavailable_profile_offers_nothing():
    profile = unavailable_profile("The availability service cannot be reached (ConnectError).")
    assert profile == {
        "display_name": "Thinkube",
        "slug": "thinkube",
        "default": True,
        "profile_options": {},
        "thinkube": {"error": "The availability service cannot be reached (ConnectError)."},
    }


def test_progress_messages_name_the_step_and_the_event(menu):
    choice = check_choice(
        {"image": "pytorch-cuda", "where": "gpu:nvidia-a100-sxm4-80gb", "gpus": "1"}, menu
    )
    scheduled = {
        "reason": "Scheduled",
        "message": "Successfully assigned jupyterhub/jupyter-alice to gpu-b",
        "type": "Normal",
    }
    assert progress_message(scheduled, choice) == "Scheduled on gpu-b (NVIDIA A100 SXM4 80GB)"
    assert progress_message(scheduled, check_choice({}, menu)) == "Scheduled on gpu-b"
    assert progress_message(scheduled, None) == "Scheduled on gpu-b"
    waiting = {
        "reason": "FailedScheduling",
        "type": "Warning",
        "message": "0/9 nodes are available: 9 Insufficient nvidia.com/gpu.",
    }
    assert (
        progress_message(waiting, choice)
        == "Waiting for a node: 0/9 nodes are available: 9 Insufficient nvidia.com/gpu."
    )
    pulling = {
        "reason": "Pulling",
        "message": 'Pulling image "quay.io/jupyter/pytorch-notebook:cuda12-2025-08-18"',
    }
    assert (
        progress_message(pulling, choice)
        == 'Pulling image: Pulling image "quay.io/jupyter/pytorch-notebook:cuda12-2025-08-18"'
    )
    assert progress_message(
        {"reason": "Started", "message": "Started container notebook"}, choice
    ) == ("Starting: Started container notebook")
    assert progress_message(
        {"reason": "BackOff", "type": "Warning", "message": "Back-off pulling image"}, choice
    ) == ("[Warning] BackOff: Back-off pulling image")


# --- the rendered page -------------------------------------------------------------------


def test_the_rendered_form_has_kubespawners_field_names_groups_and_flags(menu):
    profile = menu_profile(menu, {})
    form = Form(render([profile], {}))
    assert form.hidden == {"profile": "thinkube"}
    assert list(form.selects) == FIELDS
    assert form.values("profile-option-thinkube--image") == ["scipy", "minimal", "pytorch-cuda"]
    where = "profile-option-thinkube--where"
    assert form.values(where) == [p.key for p in menu.placements]
    assert set(form.groups()) == {
        "Anywhere",
        "GPU models",
        "Nodes with NVIDIA A100 SXM4 80GB",
        "Nodes with NVIDIA GB10",
        "Nodes with NVIDIA GeForce RTX 3090",
        "Nodes with NVIDIA GeForce RTX 4090",
        "Nodes with NVIDIA L4",
        "CPU nodes",
    }
    assert form.values(where, group="Nodes with NVIDIA A100 SXM4 80GB") == [
        "node:gpu-b",
        "node:gpu-a",
    ]
    assert form.values(where, disabled=True) == ["gpu:nvidia-l4", "node:gpu-l4", "node:infra-1"]
    assert form.values("profile-option-thinkube--gpus", disabled=True) == ["8"]
    texts = {o["value"]: o["text"] for o in form.selects[where]}
    assert (
        texts["node:gpu-node-3"]
        == "gpu-node-3: 12/32 CPU, 40/127 GiB, 1/2 × NVIDIA GeForce RTX 4090 free"
    )
    assert (
        texts["gpu:nvidia-a100-sxm4-80gb"]
        == "Any node with a free NVIDIA A100 SXM4 80GB (4 free on 1 node, 80 GiB)"
    )
    image_texts = {o["value"]: o["text"] for o in form.selects["profile-option-thinkube--image"]}
    assert image_texts["pytorch-cuda"] == "PyTorch (CUDA 12) (GPU)"
    assert form.selected() == dict(zip(FIELDS, ["scipy", "cpu", "2", "8", "0"], strict=True))
    assert "thinkube-stale" not in form.ids and "thinkube-unavailable" not in form.ids
    assert json.loads(form.scripts["thinkube-data"]) == profile["thinkube"]


def test_the_rendered_form_preselects_the_last_choices(menu):
    last = {
        "profile": "thinkube",
        "image": "pytorch-cuda",
        "where": "node:gpu-b",
        "cpu": "8",
        "memory": "32",
        "gpus": "2",
    }
    form = Form(render([menu_profile(menu, last)], last))
    assert form.selected() == dict(
        zip(FIELDS, ["pytorch-cuda", "node:gpu-b", "8", "32", "2"], strict=True)
    )
    # exactly one option selected per field
    assert all(sum(o["selected"] for o in options) == 1 for options in form.selects.values())


def test_the_rendered_form_says_when_the_data_is_stale():
    menu = lab_menu(freshness=STALE)
    form = Form(render([menu_profile(menu, {})], {}))
    assert form.ids["thinkube-stale"].startswith(
        "The availability data is 68 s old: the cluster cannot be reached right now"
    )
    assert "Your choice is checked again when you start." in form.ids["thinkube-stale"]
    assert form.ids["thinkube-age"] == "Availability as of 68 s ago."
    assert json.loads(form.scripts["thinkube-data"])["stale"] is True


def test_the_rendered_form_shows_the_age_of_fresh_data(menu):
    form = Form(render([menu_profile(menu, {})], {}))
    assert form.ids["thinkube-age"] == "Availability as of 3 s ago."


def test_the_rendered_form_keeps_the_menus_group_order(menu):
    form = Form(render([menu_profile(menu, {})], {}))
    assert form.groups() == list(dict.fromkeys(p.group for p in menu.placements))


def test_catalog_text_is_escaped_in_the_rendered_form(menu):
    menu.images[0] = dict(
        menu.images[0], display_name="Sci<b>Py</b>", description='Say "hi" & <script>x()</script>'
    )
    form = Form(render([menu_profile(menu, {})], {}))
    option = form.selects["profile-option-thinkube--image"][0]
    assert (option["text"], option["title"]) == ("Sci<b>Py</b>", 'Say "hi" & <script>x()</script>')


def test_the_embedded_json_survives_markup_in_catalog_text(menu):
    menu.images[0] = dict(
        menu.images[0], metadata={**menu.images[0]["metadata"], "mem_limit": "</script><b>"}
    )
    html = render([menu_profile(menu, {})], {})
    data = json.loads(Form(html).scripts["thinkube-data"])
    assert data["images"]["scipy"]["mem_limit"] == "</script><b>"
    assert "</script><b>" not in html


def test_a_long_node_list_says_how_many_are_left_out():
    nodes = [make_node(f"node-{i:04d}", 16, 64, None, i) for i in range(60)]
    menu = lab_menu(nodes=nodes, pods=[], settings=MenuSettings(max_nodes_listed=25))
    html = render([menu_profile(menu, {})], {})
    form = Form(html)
    assert len(form.values("profile-option-thinkube--where", group="CPU nodes")) == 25
    assert '35 more nodes are not listed; "Any node with a free …" considers them all.' in html


def test_the_rendered_form_when_the_service_is_down_offers_nothing():
    message = "The availability service cannot be reached (ConnectError)."
    html = render([unavailable_profile(message)], {})
    form = Form(html)
    assert form.selects == {}
    assert form.ids["thinkube-unavailable"] == (
        f"{message} Nothing can be started until it answers; reload this page to try again."
    )
    assert "thinkube-data" not in form.scripts
    assert "#spawn_form button[type=submit] { display: none; }" in html


# --- through the spawner: kubespawner's own rendering and profile handling ---------------


async def test_the_spawner_renders_this_form_through_kubespawner():
    availability = FakeAvailability(freshness=FRESH)
    spawner = make_spawner(availability)
    html = await spawner.get_options_form()
    profile = menu_profile(lab_menu(freshness=FRESH), {})
    profile["thinkube"]["storage_problems"] = []  # this test's hub may not read claims
    assert html == render([profile], {})
    assert availability.calls == 1
    # Every render shows what is free now.
    await spawner.get_options_form()
    assert availability.calls == 2
    # At start: one fresh check; kubespawner's own evaluation inside it reuses that.
    spawner.user_options = {"image": "scipy", "where": "cpu", "cpu": "1", "memory": "2"}
    await apply_options(spawner)
    assert availability.calls == 3


async def test_spawners_share_the_menu_of_one_service_version(monkeypatch):
    import thinkube_spawner.spawner as spawner_module

    builds = []

    def counting_build_menu(*args, **kwargs):
        builds.append(args)
        return build_menu(*args, **kwargs)

    monkeypatch.setattr(spawner_module, "build_menu", counting_build_menu)
    monkeypatch.setattr(spawner_module, "_built_menus", spawner_module._BuiltMenus())
    first = FakeAvailability(freshness={**FRESH, "version": "v1"})
    alice, bob = make_spawner(first), make_spawner(first)
    await alice.menu(fresh=True)
    bob_menu = await bob.menu(fresh=True)
    assert len(builds) == 1  # the same version: built once for both
    # the freshness is always the newest answer's, even for a shared menu
    first.freshness = {**FRESH, "version": "v1", "stale": True, "age_seconds": 42.0}
    stale_menu = await alice.menu(fresh=True)
    assert len(builds) == 1
    assert (stale_menu.stale, stale_menu.age_seconds) == (True, 42.0)
    assert (bob_menu.stale, bob_menu.age_seconds) == (False, 3.2)
    # other menu settings, or a new version, are built anew
    carol = make_spawner(first, cpu_choices=[1, 2])
    await carol.menu(fresh=True)
    first.freshness = {**FRESH, "version": "v2"}
    await alice.menu(fresh=True)
    assert len(builds) == 3
    # an answer without a version is never shared
    unversioned = FakeAvailability(freshness=FRESH)
    await make_spawner(unversioned).menu(fresh=True)
    await make_spawner(unversioned).menu(fresh=True)
    assert len(builds) == 5


async def test_the_form_made_for_a_menu_is_kept_while_its_inputs_are_the_same(monkeypatch):
    import thinkube_spawner.spawner as spawner_module

    profiles = []

    def counting_menu_profile(*args, **kwargs):
        profiles.append(args)
        return menu_profile(*args, **kwargs)

    monkeypatch.setattr(spawner_module, "menu_profile", counting_menu_profile)
    monkeypatch.setattr(spawner_module, "_built_menus", spawner_module._BuiltMenus())
    monkeypatch.setattr(spawner_module, "_rendered_forms", spawner_module._RenderedForms())
    service = FakeAvailability(freshness={**FRESH, "version": "v1"})
    alice, bob = make_spawner(service), make_spawner(service)
    first = await alice.get_options_form()
    assert await bob.get_options_form() == first  # the same menu and inputs: kept
    assert (len(profiles), service.calls) == (1, 2)  # every render still asks the service
    # the person's last options, the freshness, a new version: made again
    bob.user_options = {"image": "minimal", "where": "cpu", "cpu": "1", "memory": "4"}
    assert Form(await bob.get_options_form()).selected()["profile-option-thinkube--image"] == (
        "minimal"
    )
    service.freshness = {**STALE, "version": "v1"}
    assert "thinkube-stale" in Form(await alice.get_options_form()).ids
    service.freshness = {**FRESH, "version": "v2"}
    assert await alice.get_options_form() == first  # the same page, made again
    assert len(profiles) == 4
    # options that cannot be a key are rendered, never kept
    alice.user_options = {"image": {"not", "json"}}
    await alice.get_options_form()
    await alice.get_options_form()
    assert len(profiles) == 6


async def test_forms_rendered_at_once_share_one_request_to_the_service(monkeypatch):
    import asyncio

    import thinkube_spawner.spawner as spawner_module

    monkeypatch.setattr(spawner_module, "_built_menus", spawner_module._BuiltMenus())
    service = FakeAvailability(freshness={**FRESH, "version": "v1"})
    spawners = [make_spawner(service) for _ in range(5)]
    pages = await asyncio.gather(*(spawner.get_options_form() for spawner in spawners))
    assert len(set(pages)) == 1
    assert service.calls == 1
    # one after the other: each render asks
    await spawners[0].get_options_form()
    await spawners[1].get_options_form()
    assert service.calls == 3
    # the check at submit always makes its own request
    for spawner in spawners[:2]:
        spawner.user_options = {"image": "scipy", "where": "cpu", "cpu": "1", "memory": "2"}
    await asyncio.gather(*(apply_options(spawner) for spawner in spawners[:2]))
    assert service.calls == 5
    # a failure reaches every render that shared the request, and is not kept
    service.error = "The availability service cannot be reached (ConnectError)."
    pages = await asyncio.gather(*(spawner.get_options_form() for spawner in spawners))
    assert all("thinkube-unavailable" in Form(page).ids for page in pages)
    assert service.calls == 6
    service.error = None
    assert "thinkube-unavailable" not in Form(await spawners[0].get_options_form()).ids


async def test_the_spawner_preselects_its_last_user_options():
    spawner = make_spawner()
    spawner.user_options = {
        "profile": "thinkube",
        "image": "minimal",
        "where": "node:cpu-node-1",
        "cpu": "1",
        "memory": "4",
        "gpus": "0",
    }
    form = Form(await spawner.get_options_form())
    assert form.selected() == dict(
        zip(FIELDS, ["minimal", "node:cpu-node-1", "1", "4", "0"], strict=True)
    )


async def test_the_spawner_renders_the_unavailable_page_when_the_service_is_down():
    spawner = make_spawner(
        FakeAvailability(error="The availability service cannot be reached (ConnectError).")
    )
    form = Form(await spawner.get_options_form())
    assert form.selects == {}
    assert form.ids["thinkube-unavailable"].startswith(
        "The availability service cannot be reached (ConnectError)."
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "image": "pytorch-cuda",
            "where": "gpu:nvidia-a100-sxm4-80gb",
            "cpu": "8",
            "memory": "32",
            "gpus": "4",
        },
        {"image": "pytorch-cuda", "where": "node:ts-3090", "cpu": "4", "memory": "16", "gpus": 2},
        {"image": "minimal", "where": "node:gpu-a", "cpu": 1.0, "memory": " 4", "gpus": "0e0"},
    ],
)
async def test_kubespawner_finds_every_canonical_choice_in_the_profile(options):
    """kubespawner looks each user option up in the profile's choices (KeyError otherwise):
    the canonical options of a checked choice are always there."""
    menu = lab_menu(pods=[*lab_pods(), pod("gpu-b", "x", "1", "1Gi")])
    spawner = make_spawner()
    canonical = check_choice(options, menu).as_user_options()
    profile_list = spawner._get_initialized_profile_list([menu_profile(menu, canonical)])
    spawner.user_options = canonical
    spawner._validate_user_options(profile_list)
    spawner._load_profile(canonical["profile"], profile_list)
    assert defaults(profile_list[0]) == {k: v for k, v in canonical.items() if k != "profile"}


def test_any_stored_text_renders_as_valid_utf8():
    """A catalog entry or a node name holding text that cannot be sent (a lone surrogate, as
    a JSON escape can carry) and markup: the page is still valid UTF-8 and escaped."""
    from thinkube_spawner.errors import spawn_error
    from thinkube_spawner.form import render_form

    menu = lab_menu(freshness=FRESH)
    menu.images[0] = dict(
        menu.images[0],
        display_name="SciPy \ud800 <script>alert(1)</script>",
        description='"><img src=x onerror=alert(1)> \udfff',
    )
    html = render_form(menu_profile(menu, {}))
    html.encode("utf-8")  # strict: raises if anything cannot be sent
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "SciPy ? &lt;script&gt;" in html
    message = spawn_error("Image SciPy \ud800 is gone.", reason="invalid-choice").jupyterhub_message
    assert message.encode("utf-8") == b"Image SciPy ? is gone."


@pytest.mark.parametrize(
    "case",
    ["lab", "one small node", "gpu nodes only", "tainted pool"],
)
def test_no_option_is_greyed_out_without_its_reason_on_the_page(case):
    from tests.spawner_unit.cluster import taint

    nodes = {
        "lab": None,
        "one small node": [make_node("cpu-node-1", 16, 64, None, 1)],
        "gpu nodes only": [make_node("gpu-1", 64, 512, A100, 1)],
        "tainted pool": [taint(make_node("pool-1", 16, 64, None, 1), "dedicated", "ml")],
    }[case]
    menu = lab_menu(nodes=nodes, freshness=FRESH) if nodes else lab_menu(freshness=FRESH)
    form = Form(render([menu_profile(menu, {})], {}))
    disabled = [
        (name, option)
        for name, options in form.selects.items()
        for option in options
        if option["disabled"]
    ]
    assert disabled  # each case greys something out
    for name, option in disabled:
        assert " — " in option["text"] and option["text"].split(" — ", 1)[1].strip(), (name, option)
