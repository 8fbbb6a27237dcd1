"""The spawn form's offer to wait for a full GPU place: which places, their queue length and
estimate, the sizes a person may wait with, and the form read back."""

from __future__ import annotations

from tests.kubesim.generator import make_node
from tests.spawner_unit.cluster import (
    A100,
    FakeAvailability,
    lab_menu,
    make_spawner,
    pod,
)
from tests.spawner_unit.test_form import Form, render
from thinkube_spawner.form import (
    WAIT_GROUP,
    menu_profile,
    options_from_formdata,
    wait_label,
    wait_offers,
    wait_targets,
)
from thinkube_spawner.menu import ChoiceError, MenuSettings, check_choice

A100_KEY = "gpu:nvidia-a100-sxm4-80gb"
WHERE = "profile-option-thinkube--where"
GPUS = "profile-option-thinkube--gpus"


def full_lab():
    """Two A100 nodes whose every GPU is taken, and a CPU node."""
    nodes = [
        make_node("gpu-a", 64, 512, A100, 1),
        make_node("gpu-b", 64, 512, A100, 2),
        make_node("cpu-1", 16, 64, None, 3),
    ]
    pods = [
        pod("gpu-a", "alice-server", "4", "16Gi", gpus=4),
        pod("gpu-b", "bob-server", "4", "16Gi", gpus=4),
    ]
    return lab_menu(MenuSettings(gpu_choices=(0, 1, 2, 4, 8)), nodes=nodes, pods=pods)


def estimates(waiting=2, seconds=1500.0, eta_text="in about 25 min (estimate)"):
    return {
        "estimate": True,
        "models": [
            {
                "resource": "nvidia.com/gpu",
                "product": "NVIDIA-A100-SXM4-80GB",
                "model": "NVIDIA A100 SXM4 80GB",
                "waiting": waiting,
                "starts_in_seconds": seconds,
                "eta_text": eta_text,
            }
        ],
        "nodes": {
            "gpu-a": {"waiting": waiting, "eta_text": eta_text},
            "gpu-b": {
                "waiting": 0,
                "eta_text": "unknown (nothing running there has an expected end)",
            },
        },
    }


def test_full_gpu_places_are_offered_to_wait_for_with_queue_length_and_estimate():
    menu = full_lab()
    targets = {p.key for p in wait_targets(menu)}
    assert targets == {A100_KEY, "node:gpu-a", "node:gpu-b"}
    offers = {o.key: o for o in wait_offers(menu, estimates())}
    model = offers["wait:" + A100_KEY]
    assert model.text == (
        "Wait for the next free A100 SXM4 80GB — 2 waiting, expected start in about 25 min "
        "(estimate)"
    )
    assert model.label == "the next free NVIDIA A100 SXM4 80GB (any node)"
    node_b = offers["wait:node:gpu-b"]
    assert node_b.text.startswith("Wait for a GPU on gpu-b (A100 SXM4 80GB) — 0 waiting")
    assert "unknown" in node_b.text
    # what each could ever hold: the nodes' allocatable GPUs
    assert {row["node"] for row in model.capacity} == {"gpu-a", "gpu-b"}
    assert all(row["free"]["nvidia.com/gpu"] == 4 for row in model.capacity)


def test_no_queue_no_offer_and_nothing_full_nothing_to_wait_for():
    assert wait_offers(full_lab(), None) == []  # the service does not queue
    free = lab_menu(MenuSettings(), nodes=[make_node("gpu-a", 64, 512, A100, 1)], pods=[])
    assert wait_targets(free) == []
    assert wait_offers(free, estimates()) == []


def test_an_estimate_without_basis_says_unknown():
    offers = wait_offers(full_lab(), {"models": [], "nodes": {}})
    model = next(o for o in offers if o.key == "wait:" + A100_KEY)
    assert model.text == "Wait for the next free A100 SXM4 80GB — expected start unknown"


def test_the_form_lists_the_offers_and_keeps_sizes_one_could_wait_with():
    menu = full_lab()
    without = menu_profile(menu, {})
    gpu_choices = without["profile_options"]["gpus"]["choices"]
    # with no A100 free and no offer, no GPU count can be chosen
    assert [k for k, c in gpu_choices.items() if not c["disabled"]] == ["0"]
    offers = wait_offers(menu, estimates())
    profile = menu_profile(menu, {}, waits=offers)
    where = profile["profile_options"]["where"]
    assert where["groups"][-1] == WAIT_GROUP
    wait_choice = where["choices"]["wait:" + A100_KEY]
    assert wait_choice["group"] == WAIT_GROUP and not wait_choice["disabled"]
    assert where["choices"][A100_KEY]["disabled"]  # the place itself stays greyed out
    gpus = profile["profile_options"]["gpus"]["choices"]
    # 1, 2 and 4 GPUs could be waited for (4 per node); 8 fit no node ever
    assert [k for k, c in gpus.items() if not c["disabled"]] == ["0", "1", "2", "4"]
    assert profile["thinkube"]["placements"]["wait:" + A100_KEY]["wait"] is True
    html = render([profile], {})
    form = Form(html)
    assert "wait:" + A100_KEY in form.values(WHERE, group=WAIT_GROUP)
    assert "thinkube-wait-note" in form.ids
    option = next(o for o in form.selects[WHERE] if o["value"] == "wait:" + A100_KEY)
    assert "2 waiting, expected start in about 25 min (estimate)" in option["text"]


def test_the_last_choice_to_wait_is_preselected():
    menu = full_lab()
    offers = wait_offers(menu, estimates())
    last = {"where": A100_KEY, "wait": "1", "gpus": "2", "queue_entry": "s-0123456789ab"}
    profile = menu_profile(menu, last, waits=offers)
    chosen = {
        k: c for k, c in profile["profile_options"]["where"]["choices"].items() if c["default"]
    }
    assert list(chosen) == ["wait:" + A100_KEY]
    gpus = profile["profile_options"]["gpus"]["choices"]
    assert next(k for k, c in gpus.items() if c["default"]) == "2"


def test_the_form_read_back_asks_to_wait_for_the_place():
    formdata = {
        "profile": ["thinkube"],
        WHERE: ["wait:" + A100_KEY],
        GPUS: ["1"],
        "profile-option-thinkube--image": ["pytorch"],
    }
    options = options_from_formdata(formdata)
    assert options == {
        "profile": "thinkube",
        "where": A100_KEY,
        "wait": "1",
        "gpus": "1",
        "image": "pytorch",
    }
    plain = options_from_formdata({WHERE: [A100_KEY]})
    assert "wait" not in plain and plain["where"] == A100_KEY


def test_a_full_choice_carries_what_would_wait():
    menu = full_lab()
    options = {"where": A100_KEY, "gpus": "1", "cpu": "2", "memory": "8", "wait": "1"}
    try:
        check_choice(options, menu)
    except ChoiceError as err:
        assert err.capacity and err.choice is not None
        assert (err.choice.gpus, err.choice.cpu, err.choice.placement.key) == (1, 2.0, A100_KEY)
        assert "No A100 SXM4 80GB is free now." in str(err)
    else:
        raise AssertionError("a full A100 was accepted")
    assert wait_label(menu.placement("node:gpu-a")) == "a GPU on gpu-a (NVIDIA A100 SXM4 80GB)"


async def test_the_spawner_offers_to_wait_only_when_the_queue_answers():
    nodes = [make_node("gpu-a", 64, 512, A100, 1)]
    pods = [pod("gpu-a", "alice-server", "4", "16Gi", gpus=4)]
    queued = make_spawner(FakeAvailability(nodes=nodes, pods=pods, estimates=estimates()))
    html = await queued.get_options_form()
    assert "Wait for the next free A100 SXM4 80GB — 2 waiting" in html
    no_queue = make_spawner(FakeAvailability(nodes=nodes, pods=pods))
    assert "Wait for the next free" not in await no_queue.get_options_form()
    off = make_spawner(
        FakeAvailability(nodes=nodes, pods=pods, estimates=estimates()), offer_waiting=False
    )
    assert "Wait for the next free" not in await off.get_options_form()
