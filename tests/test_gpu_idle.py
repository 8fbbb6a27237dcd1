"""The idle-GPU policy without servers: the window, the decision and its words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub_service.gpu_idle import (
    ACTIVE,
    KERNEL_BUSY,
    KERNELS_UNKNOWN,
    NO_DATA,
    OFF,
    STOP,
    WARNED,
    GpuReading,
    IdlePolicy,
    PolicyError,
    UsageWindow,
    decide,
    duration_words,
    gpu_label,
    policy_for,
    policy_from_settings,
)

# 2026-12-06 13:30:00 UTC
T0 = datetime(2026, 12, 6, 13, 30, tzinfo=UTC).timestamp()
POLICY = IdlePolicy(enabled=True)  # 5 %, 2 h, 30 min
STEP = 30.0
GAP = 3 * STEP


def gpu0(value: float | None) -> list[GpuReading]:
    return [GpuReading("GPU-aaaa", "GPU 0 (A100)", value)]


def window_of(values: list[float | None], start: float = T0, step: float = STEP) -> UsageWindow:
    window = UsageWindow(keep_seconds=4 * 3600)
    for n, value in enumerate(values):
        window.add(start + n * step, gpu0(value))
    return window


def idle_for(seconds: float, value: float = 1.0) -> UsageWindow:
    return window_of([value] * (int(seconds // STEP) + 1))


def test_an_idle_gpu_is_warned_with_the_reason_in_words_then_stopped_after_the_grace():
    # 2 h 10 min at 0-2 %
    values = [0.0, 2.0, 1.0] * 200
    window = window_of(values[: int(130 * 60 // STEP) + 1])
    now = T0 + 130 * 60
    first = decide(window.samples, POLICY, now, max_gap=GAP)
    assert first.state == WARNED
    assert first.stop_at == now + 30 * 60
    # 13:30 + 2 h 10 min = 15:40, + 30 min grace = 16:10
    assert first.reason == (
        "GPU 0 (A100) at 0–2 % for the last 2 h 10 min; this server stops at 16:10 UTC "
        "unless you keep it"
    )
    assert first.ranges == {"GPU 0 (A100)": (0.0, 2.0)}
    # the warning stands, with the same stop time, as long as it stays idle
    later = now + 10 * 60
    for n in range(1, 21):
        window.add(now + n * STEP, gpu0(0.0))
    again = decide(window.samples, POLICY, later, max_gap=GAP, warned_at=now)
    assert again.state == WARNED and again.stop_at == now + 30 * 60
    for n in range(21, 61):
        window.add(now + n * STEP, gpu0(0.0))
    done = decide(window.samples, POLICY, now + 30 * 60, max_gap=GAP, warned_at=now)
    assert done.state == STOP
    assert "stopped at 16:10 UTC to give its GPUs back" in done.reason


def test_a_busy_gpu_is_never_warned():
    window = window_of([90.0] * 400)
    decision = decide(window.samples, POLICY, T0 + 399 * STEP, max_gap=GAP)
    assert decision.state == ACTIVE and decision.idle_since is None
    # one sample at the threshold breaks the run: idle since after it only
    values = [0.0] * 300 + [5.0] + [0.0] * 10
    window = window_of(values)
    now = T0 + (len(values) - 1) * STEP
    decision = decide(window.samples, POLICY, now, max_gap=GAP)
    assert decision.state == ACTIVE
    assert decision.idle_since == T0 + 301 * STEP
    assert "it counts as idle after 2 h" in decision.reason


def test_not_idle_long_enough_is_active():
    window = idle_for(2 * 3600 - STEP)
    decision = decide(window.samples, POLICY, T0 + 2 * 3600 - STEP, max_gap=GAP)
    assert decision.state == ACTIVE


def test_no_data_is_never_idle_and_a_gap_restarts_the_clock():
    # no metric now
    window = window_of([0.0] * 300 + [None])
    decision = decide(window.samples, POLICY, T0 + 300 * STEP, max_gap=GAP)
    assert decision.state == NO_DATA and decision.reason.startswith("no GPU metrics")
    # no sample for longer than the gap: no data now
    window = idle_for(3 * 3600)
    decision = decide(window.samples, POLICY, T0 + 3 * 3600 + GAP + 1, max_gap=GAP)
    assert decision.state == NO_DATA
    # metrics back after a gap: the idle run starts after it, however idle before
    window = window_of([0.0] * 300)
    back = T0 + 299 * STEP + 10 * 60
    for n in range(5):
        window.add(back + n * STEP, gpu0(0.0))
    decision = decide(window.samples, POLICY, back + 4 * STEP, max_gap=GAP)
    assert decision.state == ACTIVE and decision.idle_since == back
    # a GPU without a reading among others: no data
    window = UsageWindow(keep_seconds=3600)
    window.add(T0, [*gpu0(0.0), GpuReading("GPU-bbbb", "GPU 1 (A100)", None)])
    assert decide(window.samples, POLICY, T0, max_gap=GAP).state == NO_DATA
    # nothing at all
    assert decide([], POLICY, T0, max_gap=GAP).state == NO_DATA


def test_keep_restarts_the_clock():
    window = idle_for(3 * 3600)
    now = T0 + 3 * 3600
    kept = now - 600
    decision = decide(window.samples, POLICY, now, max_gap=GAP, kept_at=kept, warned_at=kept - 60)
    assert decision.state == ACTIVE
    assert decision.idle_since is not None and decision.idle_since >= kept


def test_kernels_busy_or_unknown_hold_back_the_warning():
    window = idle_for(3 * 3600)
    now = T0 + 3 * 3600
    busy = decide(window.samples, POLICY, now, max_gap=GAP, kernels="busy")
    assert busy.state == KERNEL_BUSY and "a kernel is busy" in busy.reason
    unknown = decide(window.samples, POLICY, now, max_gap=GAP, kernels="unknown")
    assert unknown.state == KERNELS_UNKNOWN


def test_policy_off_decides_nothing_but_shows_the_history():
    window = idle_for(3 * 3600)
    decision = decide(window.samples, IdlePolicy(), T0 + 3 * 3600, max_gap=GAP)
    assert decision.state == OFF
    assert decision.idle_since == T0


def test_several_gpus_must_all_be_idle_and_the_reason_names_each():
    window = UsageWindow(keep_seconds=4 * 3600)
    for n in range(int(2.5 * 3600 / STEP) + 1):
        window.add(
            T0 + n * STEP,
            [
                GpuReading("GPU-a", "GPU 0 (H100)", 0.0),
                GpuReading("GPU-b", "GPU 1 (H100)", 3.0 if n % 2 else 1.0),
            ],
        )
    decision = decide(window.samples, POLICY, T0 + 2.5 * 3600, max_gap=GAP)
    assert decision.state == WARNED
    assert decision.reason.startswith(
        "GPU 0 (H100) at 0 %, GPU 1 (H100) at 1–3 % for the last 2 h 30 min"
    )
    # one of them busy: not idle
    window.add(
        T0 + 2.5 * 3600 + STEP,
        [GpuReading("GPU-a", "GPU 0 (H100)", 0.0), GpuReading("GPU-b", "GPU 1 (H100)", 80.0)],
    )
    assert decide(window.samples, POLICY, T0 + 2.5 * 3600 + STEP, max_gap=GAP).state == ACTIVE


def test_the_window_is_bounded():
    window = UsageWindow(keep_seconds=600, max_samples=50)
    for n in range(1000):
        window.add(T0 + n, gpu0(1.0))
    assert len(window.samples) == 50
    window = UsageWindow(keep_seconds=60, max_samples=5000)
    for n in range(1000):
        window.add(T0 + n, gpu0(1.0))
    assert window.samples[0][0] == T0 + 999 - 60
    # time only goes forward
    window.add(T0, gpu0(99.0))
    assert window.samples[-1][1][0].utilization == 1.0
    points = window.points()
    assert points[-1]["gpus"] == [{"gpu": "GPU 0 (A100)", "utilization": 1.0}]


def test_group_policies():
    default = IdlePolicy(enabled=False)
    students = policy_from_settings(default, {"enabled": True, "idle_seconds": 3600}, "students")
    labs = policy_from_settings(
        default, {"enabled": True, "idle_seconds": 1800, "threshold_percent": 10}, "labs"
    )
    staff = policy_from_settings(default, {"enabled": False}, "staff")
    groups = {"students": students, "labs": labs, "staff": staff}
    assert policy_for([], default, groups) == default
    assert policy_for(["other"], default, groups) == default
    assert policy_for(["students"], default, groups) == students
    # the most lenient of the person's groups
    both = policy_for(["students", "labs"], default, groups)
    assert (both.enabled, both.idle_seconds, both.threshold_percent) == (True, 3600, 5.0)
    # an exempting group wins
    assert policy_for(["students", "staff"], default, groups).enabled is False


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"idle": 5}, "unknown setting 'idle'"),
        ({"enabled": "yes"}, "enabled must be True or False"),
        ({"threshold_percent": 150}, "threshold_percent is a percentage"),
        ({"grace_seconds": -1}, "grace_seconds must be a number of at least 0"),
        ({"idle_seconds": 0}, "idle_seconds must be more than 0"),
        ({"idle_seconds": "2h"}, "idle_seconds must be a number"),
    ],
)
def test_bad_group_settings_say_what_is_wrong(settings, message):
    with pytest.raises(PolicyError, match=message) as err:
        policy_from_settings(IdlePolicy(), settings, "gpu_idle_groups['students']")
    assert str(err.value).startswith("gpu_idle_groups['students']: ")


def test_words():
    assert duration_words(45) == "45 s"
    assert duration_words(12 * 60 + 5) == "12 min"
    assert duration_words(2 * 3600 + 10 * 60) == "2 h 10 min"
    assert duration_words(3 * 86400 + 4 * 3600) == "3 d 4 h"
    assert gpu_label(0, "NVIDIA A100-SXM4-80GB") == "GPU 0 (A100)"
    assert gpu_label(1, "NVIDIA GeForce RTX 4090") == "GPU 1 (GeForce RTX 4090)"
    assert gpu_label(2, "NVIDIA H100 80GB HBM3", "3") == "GPU 2 MIG 3 (H100 80GB HBM3)"
    assert gpu_label(3) == "GPU 3"
