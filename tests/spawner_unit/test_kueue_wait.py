"""A spawn queued in Kueue: the gated pod told from a stuck one, the two clocks of a queued
start, the place in the queue read from the visibility API's answer, and the words."""

from __future__ import annotations

import pytest

from tests.kubesim.kueue import pending_item, summary
from thinkube_core.kueue import (
    QUEUE_LABEL,
    is_admission_gated,
    pending_workloads_path,
    positions_by_owner,
)
from thinkube_spawner.choice import Choice, Placement
from thinkube_spawner.kueue_wait import (
    QUEUE_TOO_LONG,
    TIMED_OUT,
    GateClock,
    queue_message,
    queue_too_long_message,
    timed_out_message,
)

GATE = {"name": "kueue.x-k8s.io/admission"}
GATED = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}


def pod(gates=(), conditions=(), node=None) -> dict:
    spec = {"containers": [{"name": "notebook"}]}
    if gates:
        spec["schedulingGates"] = list(gates)
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": "jupyter-bob"},
        "spec": spec,
        "status": {"conditions": list(conditions)},
    }


def test_a_gated_pod_is_queued_and_an_unschedulable_one_is_not():
    assert QUEUE_LABEL == "kueue.x-k8s.io/queue-name"
    assert is_admission_gated(pod([GATE], [GATED]))
    assert is_admission_gated(pod([GATE]))  # before the API server's condition is seen
    assert is_admission_gated(pod([{"name": "example.com/quota"}], [GATED]))
    assert not is_admission_gated(pod([{"name": "example.com/quota"}]))
    assert not is_admission_gated(pod(conditions=[UNSCHEDULABLE]))
    assert not is_admission_gated(pod())
    assert not is_admission_gated(pod([GATE], [GATED], node="gpu-a"))
    assert not is_admission_gated(None)
    assert not is_admission_gated({"spec": None, "status": None})


def workload(owner: str, kind: str = "Pod", queue: str = "notebooks") -> dict:
    return {
        "metadata": {
            "name": f"{kind.lower()}-{owner}-1a2b3",
            "namespace": "default",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": owner, "uid": "u"}],
        },
        "spec": {"queueName": queue},
    }


def test_positions_come_from_the_pending_workloads_of_the_local_queue():
    answer = summary(
        [
            pending_item(workload("jupyter-bob"), 3, 0),
            pending_item(workload("train-7", kind="Job"), 4, 1),
            pending_item(workload("jupyter-carol"), 5, 2),
        ]
    )
    assert positions_by_owner(answer, "Pod") == {"jupyter-bob": 1, "jupyter-carol": 3}
    assert positions_by_owner(answer, "Job") == {"train-7": 2}
    assert positions_by_owner({"items": None}, "Pod") == {}
    assert positions_by_owner({}, "Pod") == {}
    odd = {
        "items": [
            "not an item",
            {"metadata": {"ownerReferences": [{"kind": "Pod", "name": "a"}]}},
            {
                "metadata": {"ownerReferences": ["x", {"kind": "Pod", "name": "b"}]},
                "positionInLocalQueue": True,
            },
            {
                "metadata": {"ownerReferences": [{"kind": "Pod", "name": "c"}]},
                "positionInLocalQueue": "1",
            },
            {"metadata": None, "positionInLocalQueue": 0},
        ]
    }
    assert positions_by_owner(odd, "Pod") == {}
    assert pending_workloads_path("jupyterhub", "notebooks") == (
        "/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/jupyterhub/localqueues/notebooks"
        "/pendingworkloads"
    )
    assert "/v1beta1/" in pending_workloads_path("jupyterhub", "notebooks", "v1beta1")


def test_the_queue_wait_and_the_rest_of_the_start_are_limited_apart():
    clock = GateClock(start_timeout=60, max_wait=600, started=0)
    clock.observe(5, gated=False)
    clock.observe(10, gated=True)
    assert clock.verdict(300) is None  # 290 s gated, 10 s starting
    assert clock.gated_for(300) == 290
    clock.observe(400, gated=False)  # admitted after 390 s
    assert clock.gated_for(400) == 390
    assert clock.verdict(449) is None  # 59 s of start in all: 10 before, 49 after
    assert clock.verdict(451) == TIMED_OUT
    # gated again (re-queued): the two waits add up
    clock = GateClock(start_timeout=60, max_wait=100, started=0)
    clock.observe(0, gated=True)
    clock.observe(70, gated=False)
    clock.observe(80, gated=True)
    assert clock.verdict(110) is None
    assert clock.verdict(111) == QUEUE_TOO_LONG
    # never gated: the plain start_timeout
    plain = GateClock(start_timeout=60, max_wait=3600, started=100)
    plain.observe(150, gated=False)
    assert plain.verdict(160) is None and plain.verdict(160.5) == TIMED_OUT


def a100_choice(gpus: int = 1) -> Choice:
    placement = Placement("gpu:a100", "gpu", "A100", gpu_model="NVIDIA A100 SXM4 80GB")
    return Choice({"name": "scipy"}, placement, 1, 1, gpus, None, 0.5, 1)


@pytest.mark.parametrize(
    ("position", "choice", "message"),
    [
        (
            1,
            a100_choice(),
            "Queued in 'nb' for 1 NVIDIA A100 SXM4 80GB GPU: number 1 in line (next in line).",
        ),
        (
            2,
            a100_choice(2),
            "Queued in 'nb' for 2 NVIDIA A100 SXM4 80GB GPUs: number 2 in line (1 request ahead of yours).",
        ),
        (5, None, "Queued in 'nb' for room: number 5 in line (4 requests ahead of yours)."),
        (
            None,
            a100_choice(),
            "Queued in 'nb' for 1 NVIDIA A100 SXM4 80GB GPU: waiting for the queue to admit it.",
        ),
    ],
)
def test_the_place_in_the_queue_in_words(position, choice, message):
    assert queue_message(position, "nb", choice) == message


def test_the_ends_of_a_queued_start_in_words():
    assert queue_too_long_message(1800, "nb") == (
        "Your server waited 30 minutes in the queue 'nb' and was not admitted; it was removed "
        "from the queue and nothing is running. Try again later."
    )
    assert queue_too_long_message(8 * 3600, "nb").startswith("Your server waited 8 hours")
    assert queue_too_long_message(90, "nb").startswith("Your server waited 90 seconds")
    assert timed_out_message(300) == (
        "Your server did not start within 300 seconds of leaving the queue; nothing is "
        "running. Try again in a moment."
    )
