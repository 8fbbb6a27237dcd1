"""Waiting notebook servers in the GPU queue, the pure parts: the request checked, the caps,
the views, where a request joining now would stand, and the shared helpers."""

from __future__ import annotations

import math

import pytest

from hub_service.jobs.queue import QueueEntry, Running, plan
from hub_service.jobs.spec import JobError
from hub_service.jobs.waiting import (
    StartOutcome,
    WaitingLimits,
    after_failed_start,
    check_waiting_request,
    gpu_cap_problem,
    join_estimates,
    limit_problem,
    stored_waiting_request,
    waiting_event,
    waiting_status,
    waiting_view,
)
from hub_service.jobs.waiting_page import (
    cloud_offer_for,
    cloud_offer_of,
    cloud_start_url,
    render_waiting_page,
    waiting_page_view,
)
from hub_service.local import allocations_from_users, held_servers
from thinkube_core.runpod.offers import Offer
from thinkube_core.scheduling import PodRules, capacity_reason, pod_demand
from thinkube_core.waiting import eta_text, is_queue_entry_id, scheduling_view, wants_wait

GPU = "nvidia.com/gpu"
A100 = "NVIDIA-A100-SXM4-80GB"
L4 = "NVIDIA-L4"


def gpu_node(name, product=A100, gpus=4, free_gpus=0, cpu=64.0):
    return {
        "name": name,
        "labels": {"nvidia.com/gpu.product": product},
        "taints": [],
        "ready": True,
        "unschedulable": False,
        "allocatable": {"cpu": cpu, "memory": 512 << 30, GPU: gpus, "pods": 110},
        "free": {"cpu": int(cpu * 1000), "memory": 500 << 30, GPU: free_gpus, "pods": 100},
        "gpu": {
            "resources": [{"name": GPU, "product": product, "model": product, "allocatable": gpus}]
        },
    }


def server_pod(product=A100, gpus=1, cpu="2", memory="4Gi", env_secret=False):
    container = {
        "name": "notebook",
        "image": "quay.io/jupyter/scipy-notebook",
        "resources": {
            "limits": {"cpu": cpu, "memory": memory, GPU: str(gpus)},
            "requests": {"cpu": "1", "memory": memory, GPU: str(gpus)},
        },
    }
    if env_secret:
        container["env"] = [{"name": "API_KEY", "value": "s3cret"}]
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.product",
                                    "operator": "In",
                                    "values": [product],
                                }
                            ]
                        }
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [],
            }
        },
        "tolerations": [{"key": GPU, "operator": "Exists"}],
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }


def body(**overrides):
    return {
        "server_name": "",
        "user_options": {"image": "scipy", "where": "gpu:nvidia-a100-sxm4-80gb", "gpus": "1"},
        "pod": scheduling_view(server_pod()),
        "label": "NVIDIA A100 SXM4 80GB (any node)",
        **overrides,
    }


# -- thinkube_core.waiting -----------------------------------------------------------------------


def test_the_scheduling_view_keeps_what_the_filter_reads_and_drops_the_rest():
    spec = server_pod(env_secret=True)
    view = scheduling_view(spec)
    assert "s3cret" not in str(view) and "image" not in str(view) and "volumes" not in view
    assert view["containers"] == [
        {"name": "notebook", "resources": spec["containers"][0]["resources"]}
    ]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in str(view)
    # the filter reads the same from both
    assert PodRules.of_pod_spec(view) == PodRules.of_pod_spec(spec)
    assert pod_demand(view) == pod_demand(spec)


def test_wait_and_entry_markers():
    assert wants_wait({"wait": "1"}) and wants_wait({"wait": True}) and wants_wait({"wait": "on"})
    assert not wants_wait({"wait": "0"}) and not wants_wait({}) and not wants_wait(None)
    assert is_queue_entry_id("s-0123456789ab")
    assert not is_queue_entry_id("s-0123456789abc") and not is_queue_entry_id("j-0123456789ab")
    assert not is_queue_entry_id(7)


def test_eta_text_says_estimate_or_unknown():
    assert eta_text(None, 1000).startswith("unknown")
    assert eta_text(1010, 1000) == "any moment now (estimate)"
    assert eta_text(1000 + 25 * 60, 1000) == "in about 25 min (estimate)"
    assert eta_text(1000 + 3 * 3600 + 5 * 60, 1000) == "in about 3 h 05 min (estimate)"
    assert eta_text(1000 + 2 * 86400, 1000) == "in about 2 d (estimate)"


def test_capacity_reason_counts_the_node_as_if_empty():
    pod = server_pod(gpus=4)
    rules, demand = PodRules.of_pod_spec(pod), pod_demand(pod)
    assert capacity_reason(rules, demand, gpu_node("a", free_gpus=0)) is None  # full now, not ever
    assert "needs 8 GPUs, has 4 GPUs" in capacity_reason(
        rules, pod_demand(server_pod(gpus=8)), gpu_node("a")
    )
    assert "affinity" in capacity_reason(rules, demand, gpu_node("l4", product=L4))


# -- the request checked ---------------------------------------------------------------------------


def test_a_request_is_checked_and_kept_as_the_filter_reads_it():
    request = check_waiting_request(body(), [gpu_node("gpu-a")])
    assert (request.gpu_resource, request.gpus, request.server_name) == (GPU, 1, "")
    assert request.user_options["where"] == "gpu:nvidia-a100-sxm4-80gb"
    assert request.label == "NVIDIA A100 SXM4 80GB (any node)"


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"pod": scheduling_view(server_pod(gpus=0))}, "pod", "asks for no GPU"),
        ({"pod": scheduling_view(server_pod(gpus=8))}, "pod", "no node could ever hold"),
        ({"pod": scheduling_view(server_pod(product=L4))}, "pod", "no node could ever hold"),
        ({"pod": {"tolerations": "all"}}, "pod", "cannot be read"),
        (
            {"pod": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}]}},
            "pod",
            "cannot be read",
        ),
        ({"user_options": {}}, "user_options", "spawn choice"),
        ({"user_options": {"wait": "1"}}, "user_options", "the queue's"),
        ({"user_options": {"queue_entry": "s-0123456789ab"}}, "user_options", "the queue's"),
        ({"user_options": {"image": ["x"]}}, "user_options", "text or a number"),
        ({"server_name": 7}, "server_name", "must be text"),
        ({"server_name": "x" * 300}, "server_name", "longer than"),
        ({"script": "print(1)"}, "script", "unknown field"),
        ({"cloud": 0.5}, "cloud", "must be an object"),
        ({"cloud": {"cap": -1}}, "cloud", "cloud.cap must be a price"),
        ({"cloud": {"cap": True}}, "cloud", "cloud.cap must be a price"),
        ({"cloud": {"cap": "0.5"}}, "cloud", "cloud.cap must be a price"),
        ({"cloud": {"cap": 1e9}}, "cloud", "cloud.cap must be a price"),
        ({"cloud": {"cap": 1, "gpu_memory_mib": 1.5}}, "cloud", "whole number of MiB"),
        ({"cloud": {"cap": 1, "gpu_memory_mib": 0}}, "cloud", "whole number of MiB"),
        ({"cloud": {"cap": 1, "price": 2}}, "cloud", "unknown cloud field 'price'"),
    ],
)
def test_a_bad_request_names_what_is_wrong(changes, field, words):
    with pytest.raises(JobError) as raised:
        check_waiting_request(body(**changes), [gpu_node("gpu-a")])
    assert raised.value.field == field and words in str(raised.value)


def test_the_cloud_cap_and_gpu_memory_are_kept_for_the_offer_instead():
    request = check_waiting_request(
        body(cloud={"cap": 0.6, "gpu_memory_mib": 24576}), [gpu_node("gpu-a")]
    )
    assert (request.cloud_cap, request.gpu_memory_mib) == (0.6, 24576)
    assert stored_waiting_request(request)["cloud"] == {"cap": 0.6, "gpu_memory_mib": 24576}
    plain = check_waiting_request(body(), [gpu_node("gpu-a")])
    assert (plain.cloud_cap, plain.gpu_memory_mib) == (0.0, None)


def test_not_an_object_is_refused():
    with pytest.raises(JobError, match="JSON object"):
        check_waiting_request(["x"], [gpu_node("gpu-a")])


# -- caps --------------------------------------------------------------------------------------------


def test_caps_per_person_and_per_group():
    limits = WaitingLimits(
        max_waiting=1, max_gpus=2, waiting_per_group={"staff": 3}, gpus_per_group={"staff": 8}
    )
    assert limit_problem(limits, [], 0, 0, 0, 1) is None
    refused = limit_problem(limits, [], 1, 0, 0, 1)
    assert "already wait for 1 server" in refused
    # staff may wait for three and hold eight
    assert limit_problem(limits, ["staff"], 2, 4, 0, 2) is None
    over = limit_problem(limits, [], 0, 1, 1, 1)
    assert "hold 1 GPU (notebook servers and jobs) and wait for 1 more" in over
    assert "would make 3, over your limit of 2 GPUs" in over
    assert "not open to you" in limit_problem(WaitingLimits(max_waiting=0), [], 0, 0, 0, 1)
    # a group whose GPU value is 0 lifts the cap; the largest group value wins
    assert limits.for_groups(["a", "staff"]) == (3, 8)
    assert WaitingLimits(gpus_per_group={"x": 0, "y": 2}).for_groups(["x", "y"]) == (2, 0)


def test_the_gpu_cap_is_one_check_for_servers_and_jobs():
    limits = WaitingLimits(max_gpus=2, gpus_per_group={"staff": 8})
    assert gpu_cap_problem(limits, [], 1, 0, 1, asking="this job") is None
    over = gpu_cap_problem(limits, [], 2, 0, 1, asking="this job")
    assert over == (
        "You hold 2 GPUs (notebook servers and jobs); this job's 1 would make 3, over your "
        "limit of 2 GPUs at once. Stop a server or end a job first."
    )
    assert gpu_cap_problem(limits, [], 2, 0, 0, asking="this job") is None  # no GPU asked
    assert gpu_cap_problem(limits, ["staff"], 6, 1, 1) is None
    assert gpu_cap_problem(WaitingLimits(max_gpus=0), [], 50, 50, 8) is None  # no cap
    # the queue entry of a waiting server says the same, by the same check
    assert limit_problem(limits, [], 0, 2, 0, 1) == gpu_cap_problem(limits, [], 2, 0, 1)


# -- views -------------------------------------------------------------------------------------------


def stored(status="queued", reason=None, **more):
    return {
        "id": "s-0123456789ab",
        "kind": "server",
        "user": "carol",
        "name": "",
        "status": status,
        "reason": reason,
        "message": more.pop("message", None),
        "request": {
            "label": "NVIDIA A100 SXM4 80GB (any node)",
            "user_options": {"image": "scipy", "gpus": "1", "cpu": "2", "memory": "4"},
            "gpus": 1,
        },
        "submitted_at": 1000.0,
        "deadline_at": 1000.0 + 8 * 3600,
        "finished_at": None,
        **more,
    }


def test_the_view_says_where_a_request_stands_and_when_it_may_start():
    links = {"page": "/services/x/waiting/s-0123456789ab", "server": "/user/carol/"}
    view = waiting_view(stored(), {"position": 2, "eta": 1000 + 1800}, 3, 1000, links)
    assert (view["status"], view["position"], view["queued"]) == ("waiting", 2, 3)
    assert view["eta"]["estimate"] is True and view["eta"]["starts_in_seconds"] == 1800
    assert view["eta_text"] == "in about 30 min (estimate)"
    assert view["expires_at"] == "1970-01-01T08:16:40.000Z"
    unknown = waiting_view(stored(), {"position": 1, "eta": None}, 1, 1000, links)
    assert unknown["eta"] is None and unknown["eta_text"].startswith("unknown")
    assert waiting_status(stored("running")) == "starting"
    assert waiting_status(stored("completed", "Started")) == "started"
    assert waiting_status(stored("cancelled", "Expired")) == "expired"
    assert waiting_status(stored("cancelled", "Cancelled")) == "cancelled"
    assert waiting_status(stored("failed", "Failed")) == "failed"
    done = waiting_view(stored("cancelled", "Expired"), {"position": 1}, 0, 1000, links)
    assert done["position"] is None and done["eta_text"] is None


def test_the_page_shows_position_estimate_and_a_form_to_leave():
    view = waiting_view(
        stored(), {"position": 2, "eta": 1000 + 1800}, 3, 1000, {"page": "/s/waiting/s-1"}
    )
    links = {
        "page": "/s/waiting/s-1",
        "server": "/user/carol/",
        "spawn_pending": "/hub/spawn-pending/carol/",
        "spawn": "/hub/spawn/carol/",
        "home": "/hub/home",
    }
    page = waiting_page_view(view, links, xsrf="tok<en>", api="/s/api/v1/waiting/s-1")
    html, policy = render_waiting_page(page)
    text = html.decode()
    assert 'id="position">#2<' in text and "in about 30 min (estimate)" in text
    assert 'action="/s/waiting/s-1/cancel"' in text and 'value="tok&lt;en&gt;"' in text
    assert '<meta http-equiv="refresh" content="15"' in text  # without JavaScript
    assert "<dt>GPUs</dt><dd>1</dd>" in text
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert 'id="cloud-offer"' not in text  # none given
    offered = waiting_page_view(
        view,
        links,
        xsrf="t",
        api="/a",
        cloud_offer={"text": "An RTX 4090 is free now", "action": "/hub/spawn", "fields": {}},
    )
    assert 'id="cloud-offer"' in render_waiting_page(offered)[0].decode()
    expired = waiting_view(
        stored("cancelled", "Expired", message="No A100 became free within 8 h"), {}, 0, 1000, {}
    )
    gone = render_waiting_page(waiting_page_view(expired, links, "t", "/a"))[0].decode()
    assert "expired" in gone and "No A100 became free within 8 h" in gone
    assert 'http-equiv="refresh"' not in gone and "Back to the spawn form" in gone


def test_changes_people_see_are_pushed_and_the_last_event_says_where_to_go():
    links = {"page": "/s/waiting/s-1", "server": "/user/carol/"}

    def view(entry, position=2, eta=1000 + 1800, queued=3, now=1000):
        return waiting_view(entry, {"position": position, "eta": eta}, queued, now, links)

    first = view(stored())
    name, data, final = waiting_event(None, first, links)
    assert (name, final) == ("position", False)
    assert (data["position"], data["queued"], data["eta_text"]) == (
        2,
        3,
        "in about 30 min (estimate)",
    )
    assert waiting_event(first, view(stored()), links) is None  # nothing changed
    moved = view(stored(), position=1, queued=2)
    assert waiting_event(first, moved, links)[1]["position"] == 1
    later = view(stored(), now=1000 + 600)  # the estimate comes closer
    assert waiting_event(first, later, links)[1]["eta_text"] == "in about 20 min (estimate)"
    starting = view(stored("running"))
    assert waiting_event(first, starting, links)[:3:2] == ("starting", False)
    assert waiting_event(starting, view(stored("running")), links) is None
    # back in the queue after a start that failed: where it stands again
    assert waiting_event(starting, first, links)[0] == "position"
    started = view(stored("completed", "Started", message="started on an A100"))
    assert waiting_event(starting, started, links) == (
        "started",
        {"status": "started", "url": "/user/carol/", "message": "started on an A100"},
        True,
    )
    for entry, status in (
        (stored("cancelled", "Cancelled", message="left the queue"), "cancelled"),
        (stored("cancelled", "Expired", message="Waited 8 h"), "expired"),
        (stored("failed", "Failed", message="the hub could not start it"), "failed"),
    ):
        assert waiting_event(first, view(entry), links) == (
            "ended",
            {"status": status, "message": entry["message"]},
            True,
        )


def test_a_failed_start_waits_again_a_few_times_then_ends_with_the_hubs_reason():
    taken = StartOutcome(retry=True, message="No A100 is free now")
    first = after_failed_start(taken, 0, 3)
    assert (first.waits_again, first.failed_starts) == (True, 1)
    assert first.message == "Not started yet: No A100 is free now. It waits again, at its place."
    second = after_failed_start(StartOutcome(message="spawn failed: image gone."), 1, 3)
    assert (second.waits_again, second.failed_starts) == (True, 2)
    assert second.message.startswith("Not started yet: Spawn failed: image gone. It waits")
    last = after_failed_start(taken, 2, 3)
    assert (last.waits_again, last.failed_starts) == (False, 3)
    assert last.message == (
        "The hub was asked 3 times to start it and could not: No A100 is free now. It has "
        "left the queue; start again from the spawn form to wait again."
    )
    assert after_failed_start(StartOutcome(), 0, 1).message.startswith(
        "The hub was asked once to start it and could not: The hub did not say why."
    )
    # the hub not answering at all is not counted
    unreachable = after_failed_start(None, 2, 3)
    assert (unreachable.waits_again, unreachable.failed_starts) == (True, 2)


# -- a cloud offer instead ------------------------------------------------------------------------


def offer(name, vram, price, stock="High", gpus=1, cloud="SECURE"):
    return Offer(f"NVIDIA {name}", name, vram, cloud, price, None, stock, gpus)


OFFERS = [
    offer("RTX A4000", 16, 0.17),  # too small for a 24 GB choice
    offer("RTX A6000", 48, 0.49),
    offer("RTX 4090", 24, 0.69),
    offer("L40S", 48, 0.39, stock=None),  # none free to rent
    offer("A40", 48, 0.30, cloud="ELSEWHERE"),  # not a cloud the spawner rents from
]


def cloud_entry(cap, memory=24576, gpus=1, status="queued"):
    entry = stored(status)
    entry["request"] = {
        **entry["request"],
        "gpus": gpus,
        "cloud": {"cap": cap, "gpu_memory_mib": memory},
        "user_options": {
            "profile": "thinkube",
            "where": "gpu:rtx-4090",
            "image": "scipy",
            "cpu": "2",
            "memory": "4",
            "gpus": str(gpus),
        },
    }
    return entry


def test_the_waiting_page_offers_the_cheapest_cloud_gpu_that_fits_within_the_cap():
    assert cloud_offer_of(cloud_entry(0.6), OFFERS).display_name == "RTX A6000"
    assert cloud_offer_of(cloud_entry(1.0), OFFERS).display_name == "RTX A6000"
    # below every fitting offer, no cap (no cloud for them), two GPUs, or no longer waiting
    assert cloud_offer_of(cloud_entry(0.4), OFFERS) is None
    assert cloud_offer_of(cloud_entry(0.0), OFFERS) is None
    assert cloud_offer_of(cloud_entry(5.0, gpus=2), OFFERS) is None
    assert cloud_offer_of(cloud_entry(1.0, status="running"), OFFERS) is None
    assert cloud_offer_of(stored(), OFFERS) is None  # registered without a cloud part
    # the lab GPU's memory unknown: the cheapest of the same count
    assert cloud_offer_of(cloud_entry(1.0, memory=None), OFFERS).display_name == "RTX A4000"
    shown = cloud_offer_for(cloud_entry(0.6), OFFERS, "/s/waiting/s-1/cloud", "tok")
    assert shown == {
        "text": "An RTX A6000 on RunPod is free now at $0.49/h — start there instead.",
        "action": "/s/waiting/s-1/cloud",
        "fields": {"_xsrf": "tok", "offer": "SECURE:NVIDIA RTX A6000:1"},
    }
    assert cloud_offer_for(cloud_entry(0.4), OFFERS, "/a", "tok") is None
    url = cloud_start_url(cloud_entry(0.6), OFFERS[1], "/hub/")
    assert url == (
        "/hub/spawn/carol?opt-profile=thinkube&opt-image=scipy&opt-cpu=2&opt-memory=4"
        "&opt-where=cloud%3ASECURE%3ANVIDIA+RTX+A6000%3A1&opt-pricing=on-demand&opt-gpus=1"
    )


# -- where a request joining now would stand ---------------------------------------------------------


def waiting_entry(id, user, at, gpus=1, product=A100, expected=3600.0):
    pod = server_pod(product=product, gpus=gpus)
    return QueueEntry(
        id, user, at, expected, pod_demand(pod), PodRules.of_pod_spec(pod), 0, "server"
    )


def test_join_estimates_count_who_waits_per_model_and_node_and_when_a_gpu_frees():
    nodes = [gpu_node("gpu-a"), gpu_node("gpu-b"), gpu_node("l4-1", product=L4, gpus=1)]
    running = [
        Running("r1", "alice", "gpu-a", started_at=0, expected_s=7200, gpus=4),
        Running("r2", "bob", "gpu-b", started_at=0, expected_s=None, gpus=4),  # a server
        Running("r3", "dave", "l4-1", started_at=0, expected_s=None, gpus=1),
    ]
    waiting = [waiting_entry("s1", "carol", 10), waiting_entry("s2", "erin", 20, gpus=2)]
    made = plan(waiting, running, nodes, now=1000)
    assert made.start == []
    # carol's one GPU and erin's two on gpu-a, when alice's job ends: 7200
    assert made.eta == {"s1": 7200, "s2": 7200}
    estimates = join_estimates(made, waiting, nodes, now=1000)
    a100 = next(m for m in estimates["models"] if m["product"] == A100)
    assert a100["waiting"] == 2 and a100["starts_in_seconds"] == 6200
    assert a100["eta_text"] == "in about 1 h 43 min (estimate)"
    assert estimates["nodes"]["gpu-a"]["waiting"] == 2
    # gpu-b is held by a server with no expected end: no basis
    assert estimates["nodes"]["gpu-b"]["eta"] is None
    l4 = next(m for m in estimates["models"] if m["product"] == L4)
    assert l4["waiting"] == 0 and l4["eta"] is None and l4["eta_text"].startswith("unknown")


def test_servers_with_a_longest_run_give_the_estimate_a_basis():
    nodes = [gpu_node("gpu-a", gpus=1)]
    running = [Running("server:jupyter-alice", "alice", "gpu-a", 0, 3600.0, 1)]
    made = plan([], running, nodes, now=600)
    assert made.gpu_free_at == {"gpu-a": 3600}
    # a waiting server with no expected end pushes what comes after it out of reach
    waiting = [waiting_entry("s1", "carol", 10, expected=math.inf)]
    made = plan(waiting, running, nodes, now=600)
    assert made.eta["s1"] == 3600 and made.gpu_free_at["gpu-a"] is None


def test_one_machine_servers_holding_gpus_are_read_from_the_hubs_models():
    users = [
        {
            "name": "alice",
            "servers": {
                "": {
                    "started": "2026-01-02T03:04:05.000000Z",
                    "user_options": {"gpus": "1"},
                    "state": {
                        "thinkube_allocation": {"cores": [0], "gpus": ["GPU-a"], "memory_gib": 2}
                    },
                }
            },
        },
        {"name": "bob", "servers": {"": {"user_options": {"gpus": "0", "cpu": "1"}}}},
    ]
    allocations = allocations_from_users(users)
    held = held_servers(allocations + [{"job": "j-1", "server": "", "gpus": ["GPU-b"]}], "box")
    assert [(h["user"], h["node"], h["gpus"]) for h in held] == [("alice", "box", 1)]
    assert held[0]["started_at"] == 1767323045.0
