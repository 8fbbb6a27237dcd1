"""RunPod offers in ThinkubeSpawner's menu: placements built from the service's cloud
section, per-person price caps at render and at submit, pricing (on demand or spot), and the
form: the cloud group, the pricing field and the storage note. Pure: no servers."""

from __future__ import annotations

import pytest

from tests.spawner_unit.cluster import FakeAvailability, documents, images, lab_nodes, lab_pods
from tests.spawner_unit.test_form import Form, render
from thinkube_core.runpod.offers import Offer
from thinkube_spawner.form import CLOUD_STORAGE_NOTE, menu_profile
from thinkube_spawner.menu import ChoiceError, MenuSettings, build_menu, check_choice
from thinkube_spawner.servers import CloudServer, KubernetesServer

RTX_4090 = Offer("NVIDIA GeForce RTX 4090", "RTX 4090", 24, "COMMUNITY", 0.69, 0.35, "High")
H100 = Offer("NVIDIA H100 80GB HBM3", "H100 80GB", 80, "SECURE", 2.99, 1.75, "Low")
SPOT_ONLY = Offer("NVIDIA A40", "A40", 48, "COMMUNITY", None, 0.2, "Medium")
CLOUD = {
    "configured": True,
    "offers": [o.to_dict() for o in (RTX_4090, H100, SPOT_ONLY)],
    "fetched_at": "2026-11-23T07:00:00.000Z",
    "error": None,
}
WHERE = "profile-option-thinkube--where"


def cloud_menu(cloud=CLOUD):
    nodes, summary = documents(lab_nodes(), lab_pods())
    return build_menu(nodes, summary, images(), MenuSettings(), {}, cloud)


def test_offers_become_cloud_placements_in_the_services_order():
    menu = cloud_menu()
    cloud = [p for p in menu.placements if p.kind == "cloud"]
    assert [p.key for p in cloud] == [
        "cloud:COMMUNITY:NVIDIA GeForce RTX 4090:1",
        "cloud:SECURE:NVIDIA H100 80GB HBM3:1",
        "cloud:COMMUNITY:NVIDIA A40:1",
    ]
    assert cloud[0].label == (
        "RunPod community cloud: RTX 4090 24 GB, $0.69/h on demand, $0.35/h spot, stock high"
    )
    assert {p.group for p in cloud} == {"RunPod cloud"}
    assert cloud[0].offer == RTX_4090
    # the lab's own placements come first, unchanged
    assert menu.placements[0].key == "cpu"
    assert menu.cloud_note is None


@pytest.mark.parametrize(
    "cloud, note",
    [
        (None, None),  # a service without its cloud part
        ({"configured": False, "reason": "no key", "offers": []}, None),
        (
            {"configured": True, "offers": [], "error": "RunPod answered HTTP 503"},
            "No cloud GPU offers are known right now (RunPod answered HTTP 503).",
        ),
    ],
)
def test_no_cloud_placements_without_offers(cloud, note):
    menu = cloud_menu(cloud)
    assert not [p for p in menu.placements if p.kind == "cloud"]
    assert menu.cloud_note == note


def test_malformed_offers_are_left_out():
    cloud = {
        **CLOUD,
        "offers": [
            {"gpu_type_id": "x"},  # missing fields
            {**RTX_4090.to_dict(), "cloud_type": "MOON"},
            {**RTX_4090.to_dict(), "unexpected": 1},
            "not an object",
            H100.to_dict(),
        ],
    }
    menu = cloud_menu(cloud)
    assert [p.offer for p in menu.placements if p.kind == "cloud"] == [H100]


def options(where, **more):
    return {"image": "scipy", "where": where, "cpu": "1", "memory": "2", **more}


def test_a_cloud_choice_within_the_cap():
    menu = cloud_menu()
    choice = check_choice(options("cloud:" + RTX_4090.key), menu, cloud_cap=1.0)
    assert choice.cloud and choice.placement.offer == RTX_4090
    assert (choice.spot, choice.gpus, choice.node) == (False, 1, None)
    assert choice.as_user_options()["pricing"] == "on-demand"
    spot = check_choice(options("cloud:" + H100.key, pricing="spot"), menu, cloud_cap=2.0)
    assert spot.spot and spot.as_user_options()["pricing"] == "spot"


@pytest.mark.parametrize(
    "where, extra, cap, message",
    [
        (
            "cloud:" + RTX_4090.key,
            {},
            0.0,
            "Cloud GPUs are not available to you on this hub.",
        ),
        (
            "cloud:" + H100.key,
            {},
            2.0,
            "H100 80GB costs $2.99/h on demand, over your cloud limit of $2.00/h.",
        ),
        (
            "cloud:" + SPOT_ONLY.key,
            {},
            5.0,
            "A40 has no on-demand price on RunPod right now.",
        ),
        (
            "cloud:" + RTX_4090.key,
            {"pricing": "free"},
            5.0,
            "Pricing must be 'on-demand' or 'spot'; got 'free'.",
        ),
        ("cloud:SECURE:made-up:1", {}, 5.0, "Unknown placement 'cloud:SECURE:made-up:1'."),
        ("cpu", {"pricing": "spot"}, 5.0, "Pricing (on demand or spot) is for cloud GPUs only."),
    ],
)
def test_cloud_choices_refused(where, extra, cap, message):
    with pytest.raises(ChoiceError) as raised:
        check_choice(options(where, **extra), cloud_menu(), cloud_cap=cap)
    assert str(raised.value) == message
    assert not raised.value.capacity


def test_the_form_lists_only_offers_within_the_persons_cap():
    menu = cloud_menu()
    none = Form(render([menu_profile(menu, {}, cloud_cap=0.0)]))
    assert "RunPod cloud" not in none.groups()
    assert "profile-option-thinkube--pricing" not in none.selects
    assert "thinkube-cloud-note" not in none.ids

    capped = Form(render([menu_profile(menu, {}, cloud_cap=1.0)]))
    assert capped.groups()[-1] == "RunPod cloud"
    # the H100 costs more than 1 $/h either way; the A40 is within it as spot
    assert capped.values(WHERE, group="RunPod cloud") == [
        "cloud:" + RTX_4090.key,
        "cloud:" + SPOT_ONLY.key,
    ]
    assert capped.values("profile-option-thinkube--pricing") == ["on-demand", "spot"]
    assert capped.selected()["profile-option-thinkube--pricing"] == "on-demand"
    assert capped.ids["thinkube-cloud-note"] == CLOUD_STORAGE_NOTE
    # the lab's default stays preselected
    assert capped.selected()[WHERE] == "cpu"


def test_the_form_preselects_a_last_cloud_choice():
    menu = cloud_menu()
    last = options("cloud:" + H100.key, pricing="spot")
    form = Form(render([menu_profile(menu, last, cloud_cap=5.0)]))
    assert form.selected()[WHERE] == "cloud:" + H100.key
    assert form.selected()["profile-option-thinkube--pricing"] == "spot"
    # a cap lowered since: the offer is no longer listed nor preselected
    lower = Form(render([menu_profile(menu, last, cloud_cap=1.0)]))
    assert "cloud:" + H100.key not in lower.values(WHERE)
    assert lower.selected()[WHERE] == "cpu"


def test_the_form_says_when_cloud_is_on_but_no_offer_is_known():
    menu = cloud_menu({"configured": True, "offers": [], "error": "RunPod answered HTTP 503"})
    form = Form(render([menu_profile(menu, {}, cloud_cap=1.0)]))
    assert form.ids["thinkube-cloud-unavailable"] == (
        "No cloud GPU offers are known right now (RunPod answered HTTP 503)."
    )
    assert "thinkube-cloud-unavailable" not in Form(render([menu_profile(menu, {})])).ids


async def test_the_spawner_offers_cloud_only_with_a_key_a_public_url_and_a_cap(monkeypatch):
    from tests.spawner_unit.cluster import make_spawner

    class WithCloud(FakeAvailability):
        async def fetch(self, held_version=None):
            import json

            from thinkube_spawner.availability import Answer

            answer = await super().fetch(held_version)
            body = json.loads(answer.raw)
            body["cloud"] = CLOUD
            return Answer(None, raw=json.dumps(body).encode())

    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_" + "k" * 40)
    off = make_spawner(WithCloud())  # no cap
    assert off.cloud_cap() == 0.0
    no_url = make_spawner(WithCloud(), cloud_price_cap=1.0)
    assert no_url.cloud_cap() == 0.0  # pods could not call the hub back
    on = make_spawner(
        WithCloud(), cloud_price_cap=1.0, cloud_public_hub_url="https://hub.example.org/"
    )
    assert on.cloud_cap() == 1.0
    html = await on.get_options_form()
    assert "RunPod community cloud: RTX 4090 24 GB" in html
    assert "RunPod cloud" not in await off.get_options_form()
    # the key is nowhere in the page
    assert "rpa_" not in html


async def test_the_spawner_keeps_a_cloud_servers_pod_id_in_its_state():
    from tests.spawner_unit.cluster import make_spawner

    kube = make_spawner()
    assert isinstance(kube.backend, KubernetesServer) and "runpod_pod_id" not in kube.get_state()
    state = {**kube.get_state(), "runpod_pod_id": "pod-7", "runpod_offer": RTX_4090.key}
    # the hub restarted: a new spawner loads the saved state, before any use of RunPod
    resumed = make_spawner()
    resumed.load_state(state)
    assert isinstance(resumed.backend, CloudServer)
    assert resumed.get_state()["runpod_pod_id"] == "pod-7"
    assert resumed.backend.runpod.pod_id == "pod-7"  # the backend, built on first use, has it
    resumed.clear_state()
    assert "runpod_pod_id" not in resumed.get_state()


async def test_with_cloud_on_lab_servers_accept_the_hubs_origin(monkeypatch):
    """Cloud needs the hub's proxy to pass on the target's host (--change-origin): a lab
    server then sees its own address as Host, and is told the hub's origin may call it."""
    from tests.spawner_unit.cluster import apply_options, make_spawner

    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_" + "k" * 40)
    choice = {"image": "scipy", "where": "cpu", "cpu": "1", "memory": "2"}
    plain = make_spawner(args=["--debug"])
    plain.user_options = dict(choice)
    await apply_options(plain)
    assert plain.args == ["--debug"]
    cloud = make_spawner(
        args=["--debug"],
        cloud_price_cap=1.0,
        cloud_public_hub_url="https://hub.example.org/jupyter/",
    )
    for _ in range(2):  # each spawn starts from the admin's args
        cloud.user_options = dict(choice)
        await apply_options(cloud)
        assert cloud.args == ["--debug", "--ServerApp.allow_origin=https://hub.example.org"]
