"""hub_service.jobs.queue: the order, what starts where, positions and estimates."""

from __future__ import annotations

from hub_service.jobs.queue import QueueEntry, Running, plan, queue_order
from thinkube_core.scheduling import PodRules

GPU = "nvidia.com/gpu"
ANY = PodRules()
GPU_RULES = PodRules.of_pod_spec({"tolerations": [{"key": GPU, "operator": "Exists"}]})


def entry(id, user="alice", at=0.0, gpus=1, expected=600.0, priority=0, cpu=1000, rules=None):
    demand = {"cpu": cpu, "memory": 1 << 30}
    if gpus:
        demand[GPU] = gpus
    return QueueEntry(
        id, user, at, expected, demand, rules or (GPU_RULES if gpus else ANY), priority
    )


def node(name, gpus=4, cpu=32000, taint=True):
    return {
        "name": name,
        "labels": {},
        "taints": [{"key": GPU, "value": "present", "effect": "NoSchedule"}] if taint else [],
        "ready": True,
        "unschedulable": False,
        "free": {"cpu": cpu, "memory": 256 << 30, "pods": 100, **({GPU: gpus} if gpus else {})},
    }


def test_fair_share_interleaves_people_within_a_priority():
    waiting = [entry(f"a{i}", "alice", at=i) for i in range(4)] + [entry("b0", "bob", at=10)]
    order = [e.id for e in queue_order(waiting)]
    assert order == ["a0", "b0", "a1", "a2", "a3"]  # bob's one job does not wait for four
    # what a person already runs counts: alice runs two, so bob's first goes first
    assert [e.id for e in queue_order(waiting, {"alice": 2})][:2] == ["b0", "a0"]
    # priority beats fair share
    urgent = entry("a9", "alice", at=99, priority=5)
    assert queue_order([*waiting, urgent])[0].id == "a9"


def test_what_fits_starts_on_the_least_loaded_node():
    running = [Running("r1", "carol", "gpu-1", started_at=0, expected_s=3000, gpus=2)]
    nodes = [node("gpu-1", gpus=2), node("gpu-2", gpus=4)]
    result = plan([entry("j1", gpus=1)], running, nodes, now=1000)
    # gpu-1 has 2000 s of work ahead, gpu-2 none
    assert [(e.id, n) for e, n in result.start] == [("j1", "gpu-2")]
    assert result.order == [] and result.positions == {}


def test_a_big_job_holds_its_place_against_smaller_ones_of_its_gpu():
    nodes = [node("gpu-1", gpus=1)]
    big = entry("big", "alice", at=0, gpus=4)
    small = entry("small", "bob", at=1, gpus=1)
    cpu_only = entry("cpu", "carol", at=2, gpus=0, rules=ANY)
    nodes.append(node("cpu-1", gpus=0, taint=False))
    result = plan([big, small, cpu_only], [], nodes, now=0)
    # the one-GPU job would fit, but waits behind the four-GPU one; CPU-only work starts
    assert [(e.id, n) for e, n in result.start] == [("cpu", "cpu-1")]
    assert result.order == ["big", "small"] and result.positions == {"big": 1, "small": 2}
    assert result.expected_node["big"] is None  # no node could ever hold four GPUs
    assert result.eta["big"] is None


def test_estimates_follow_the_running_jobs_expected_ends():
    running = [
        Running("r1", "carol", "gpu-1", started_at=0, expected_s=1000, gpus=1),
        Running("r2", "dave", "gpu-1", started_at=0, expected_s=3000, gpus=1),
    ]
    nodes = [node("gpu-1", gpus=0)]  # both GPUs busy
    nodes[0]["free"][GPU] = 0
    waiting = [entry("j1", "alice", at=10, gpus=1, expected=500), entry("j2", "bob", at=20, gpus=2)]
    result = plan(waiting, running, nodes, now=200)
    assert result.start == []
    assert result.expected_node == {"j1": "gpu-1", "j2": "gpu-1"}
    assert result.eta["j1"] == 1000  # when r1 ends
    assert result.eta["j2"] == 3000  # both GPUs: when r2 ends (j1 done by 1500)


def test_only_nodes_whose_rules_take_the_job():
    untainted_gpu = node("open-gpu", gpus=4, taint=False)
    tainted_gpu = node("gpu-1", gpus=4)
    no_toleration = entry("j1", gpus=1, rules=ANY)
    result = plan([no_toleration], [], [tainted_gpu, untainted_gpu], now=0)
    assert [(e.id, n) for e, n in result.start] == [("j1", "open-gpu")]
    result = plan([no_toleration], [], [tainted_gpu], now=0)
    assert result.start == [] and result.expected_node["j1"] is None


def test_a_full_pod_count_means_no_room():
    full = node("gpu-1")
    full["free"]["pods"] = 0
    assert plan([entry("j1")], [], [full], now=0).start == []


def test_an_entry_submitted_after_a_plan_is_placed_where_the_next_plan_puts_it():
    """`Plan.later_key`/`place_of` give a new entry the position the next plan gives it,
    across people, priorities and what each runs, including what this plan starts."""
    import random

    rng = random.Random(7)
    users = ["ann", "ben", "cat", "dan"]
    for trial in range(40):
        waiting = [
            entry(f"w{i}", rng.choice(users), at=i, priority=rng.choice([0, 0, 0, 5]))
            for i in range(rng.randint(0, 40))
        ]
        running = [
            Running(f"r{i}", rng.choice(users), "gpu-1", 0, 600, gpus=1)
            for i in range(rng.randint(0, 3))
        ]
        nodes = [node("gpu-1", gpus=rng.randint(3, 6))]  # some of them start now
        first = plan(waiting, running, nodes, now=0)
        started = {e.id for e, _ in first.start}
        new = entry("new", rng.choice(users), at=1000, priority=rng.choice([0, 5, 9]))
        key = first.later_key(new.user, new.priority, new.submitted_at, new.id)
        provisional = first.place_of(key) + 1

        # The next plan, once what the first started runs (and nothing more can start).
        still = [e for e in waiting if e.id not in started]
        now_running = running + [Running(e.id, e.user, n, 0, 600, gpus=1) for e, n in first.start]
        full = [node("gpu-1", gpus=0)]
        assert plan([*still, new], now_running, full, now=0).positions["new"] == provisional, trial


def test_a_later_entry_behind_one_of_its_kind_that_waits_could_not_start():
    full = node("gpu-1", gpus=1, taint=False)
    waiting = [entry("big", "ann", at=0, gpus=2), entry("cpu", "ann", at=1, gpus=0)]
    made = plan(waiting, [], [full], now=0)
    assert [e.id for e, _ in made.start] == ["cpu"] and made.positions == {"big": 1}

    def could_start(new):
        key = made.later_key(new.user, new.priority, new.submitted_at, new.id)
        return made.could_start(new, key)

    # behind "big", a one-GPU entry would hold its place: no new plan could start it
    assert not could_start(entry("small", "ann", at=5, gpus=1))
    # one that goes ahead of it might
    assert could_start(entry("urgent", "ann", at=5, gpus=1, priority=3))
    # another kind (no GPU) is not held by it
    assert could_start(entry("cpu2", "ann", at=5, gpus=0))


def test_planning_hands_over_what_starts_before_it_estimates_the_rest():
    from hub_service.jobs.queue import STEP, planning

    waiting = [entry(f"w{i}", f"u{i % 7}", at=i) for i in range(3 * STEP)]
    steps = planning(waiting, [], [node("gpu-1", gpus=3), node("gpu-2", gpus=2)], now=0)
    seen = []  # "way" where it gives way, the starts where it hands them over
    while True:
        try:
            step = next(steps)
        except StopIteration as made:
            result = made.value
            break
        seen.append("way" if step is None else list(step))
    # one pass to decide what starts, handed over, then one to estimate the others
    assert seen == ["way"] * 3 + [result.start] + ["way"] * 3
    assert len(result.start) == 5
    assert set(result.positions) == {e.id for e in waiting} - {e.id for e, _ in result.start}
