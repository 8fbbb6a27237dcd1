"""kubesim's Job controller and TTL-after-finished controller, after kube-controller-manager
1.32 (k8s.io/kubernetes pkg/controller/job and pkg/controller/ttlafterfinished).

What a Job does here, as there:

- Pods come from ``spec.template`` with the generated labels, an ownerReference to the Job
  (controller, blockOwnerDeletion) and the ``batch.kubernetes.io/job-tracking`` finalizer;
  the controller counts a finished pod into ``status.succeeded``/``failed`` and then removes
  the finalizer. Up to ``parallelism`` pods run while ``completions`` are not reached.
- ``suspend``: no pods; suspending deletes the active pods (not counted as failures), with
  condition Suspended (JobSuspended); resuming sets it False (JobResumed) and restarts
  ``status.startTime``, so the ``activeDeadlineSeconds`` clock stops while suspended.
- A failed pod is replaced after a back-off (``pod_backoff_s``, doubled per consecutive
  failure, at most 6 minutes) until more than ``backoffLimit`` pods failed (with
  ``restartPolicy: OnFailure``: until the containers' restarts reach it).
- ``podFailurePolicy`` rules (``onExitCodes``, ``onPodConditions``): FailJob, Ignore, Count.
- Termination takes two steps: first FailureTarget (BackoffLimitExceeded, DeadlineExceeded,
  PodFailurePolicy) or SuccessCriteriaMet (CompletionsReached); once no pod is terminating,
  Failed or Complete with the same reason and message, ``completionTime`` for Complete.
- ``ttlSecondsAfterFinished``: the finished Job is deleted (propagation Foreground) that long
  after it finished.

Not modelled: Indexed completion mode, ``backoffLimitPerIndex``, ``successPolicy``,
``managedBy``, pod adoption by selector (pods are matched by their controller reference).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .garbage import controller_of
from .resources import BY_PATH
from .store import ApiError, Change, now_rfc3339

if TYPE_CHECKING:
    from .sim import KubeSim

log = logging.getLogger("kubesim.jobs")

JOBS = BY_PATH[("batch", "v1", "jobs")]
PODS = BY_PATH[("", "v1", "pods")]

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
CONTROLLER = "job-controller"
TTL_CONTROLLER = "ttl-after-finished-controller"
MAX_POD_BACKOFF_S = 360.0
_TERMINAL = ("Succeeded", "Failed")

JobKey = tuple[str, str]


# -- reading Jobs and pods (pure) ---------------------------------------------------------------


def condition(obj: dict, kind: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def is_finished(job: dict) -> bool:
    return bool(condition(job, "Complete") or condition(job, "Failed"))


def is_suspended(job: dict) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def pod_phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def is_active(pod: dict) -> bool:
    """``controller.FilterActivePods``: neither finished nor being deleted."""
    return pod_phase(pod) not in _TERMINAL and not pod["metadata"].get("deletionTimestamp")


def is_pod_failed(pod: dict, job: dict) -> bool:
    """A failed pod, or one deleted before it succeeded (unless only failed pods count)."""
    if pod_phase(pod) == "Failed":
        return True
    spec = job.get("spec") or {}
    if spec.get("podFailurePolicy") is not None or spec.get("podReplacementPolicy") == "Failed":
        return False
    return bool(pod["metadata"].get("deletionTimestamp")) and pod_phase(pod) != "Succeeded"


def is_ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _exit_code_matches(requirement: dict, statuses: list[dict], pod_spec: dict) -> dict | None:
    """The first container status whose non-zero exit code satisfies an ``onExitCodes``."""
    wanted_container = requirement.get("containerName")
    values = set(requirement.get("values") or [])
    operator = requirement.get("operator")
    for status in statuses:
        if wanted_container and status.get("name") != wanted_container:
            continue
        terminated = (status.get("state") or {}).get("terminated")
        code = (terminated or {}).get("exitCode")
        if code in (None, 0):
            continue
        if (operator == "In" and code in values) or (operator == "NotIn" and code not in values):
            return {"name": status.get("name"), "exitCode": code}
    return None


def match_pod_failure_policy(policy: dict | None, pod: dict) -> tuple[str | None, str | None]:
    """(action, message) of the first rule matching a failed pod, like ``matchPodFailurePolicy``:
    FailJob carries the Job's failure message; (None, None) when no rule matches."""
    if not policy:
        return None, None
    status = pod.get("status") or {}
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    meta = pod["metadata"]
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        if rule.get("onExitCodes"):
            matched = _exit_code_matches(rule["onExitCodes"], statuses, pod.get("spec") or {})
            if matched is None:
                continue
            message = (
                f"Container {matched['name']} for pod {meta['namespace']}/{meta['name']} failed "
                f"with exit code {matched['exitCode']} matching {action} rule at index {index}"
            )
            return action, message
        for pattern in rule.get("onPodConditions") or []:
            for cond in status.get("conditions") or []:
                if cond.get("type") == pattern.get("type") and cond.get("status") == pattern.get(
                    "status", "True"
                ):
                    message = (
                        f"Pod {meta['namespace']}/{meta['name']} has condition {cond['type']} "
                        f"matching {action} rule at index {index}"
                    )
                    return action, message
    return None, None


def restarts_past_backoff_limit(job: dict, pods: list[dict]) -> bool:
    """``pastBackoffLimitOnFailure``: with restartPolicy OnFailure, the containers' restarts
    of the pods still running count against backoffLimit."""
    spec = job.get("spec") or {}
    template_spec = (spec.get("template") or {}).get("spec") or {}
    if template_spec.get("restartPolicy") != "OnFailure":
        return False
    restarts = 0
    for pod in pods:
        if pod_phase(pod) in ("Running", "Pending"):
            status = pod.get("status") or {}
            for key in ("initContainerStatuses", "containerStatuses"):
                restarts += sum(s.get("restartCount", 0) for s in status.get(key) or [])
    limit = spec.get("backoffLimit", 6)
    return restarts > 0 if limit == 0 else restarts >= limit


def wanted_active(job: dict, succeeded: int, active: int) -> int:
    spec = job["spec"]
    parallelism = spec.get("parallelism", 1)
    completions = spec.get("completions")
    if completions is None:
        return active if succeeded > 0 else parallelism
    return max(0, min(completions - succeeded, parallelism))


def parse_time(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def new_condition(kind: str, status: str, reason: str, message: str) -> dict:
    now = now_rfc3339()
    return {
        "type": kind,
        "status": status,
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def pod_from_template(job: dict) -> dict:
    """The pod the Job controller asks the API for (``CreatePodsWithGenerateName``)."""
    meta = job["metadata"]
    template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
    template_meta = template.get("metadata") or {}
    pod_meta: dict[str, Any] = {
        "generateName": f"{meta['name']}-",
        "namespace": meta["namespace"],
        "labels": dict(template_meta.get("labels") or {}),
        "finalizers": [*(template_meta.get("finalizers") or []), TRACKING_FINALIZER],
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if template_meta.get("annotations"):
        pod_meta["annotations"] = dict(template_meta["annotations"])
    return {"metadata": pod_meta, "spec": template.get("spec") or {}}


# -- the controller -------------------------------------------------------------------------


class JobController:
    """Keeps Jobs and their pods moving. Changes to Jobs and to pods a Job controls queue the
    Job; one pass per event-loop turn syncs the queued Jobs (a store listener must not write
    while the store is notifying). Timers requeue a Job for its deadline, its pod back-off
    and its TTL."""

    def __init__(self, sim: KubeSim, pod_backoff_s: float = 10.0):
        self.sim = sim
        self.store = sim.store
        self.pod_backoff_s = pod_backoff_s
        self._pods: dict[str, set[JobKey]] = {}  # Job uid -> the pods it controls
        self._pod_job: dict[JobKey, str] = {}  # pod -> its Job's uid
        self._jobs: dict[str, JobKey] = {}  # uid -> Job
        self._dirty: set[JobKey] = set()
        self._orphans: set[JobKey] = set()  # pods that may hold the finalizer of a gone Job
        self._scheduled = False
        self._timers: dict[tuple[JobKey, str], asyncio.TimerHandle] = {}
        # Job uid -> (failures since the last success, monotonic time of the last failure)
        self._failures: dict[str, tuple[int, float]] = {}
        # Job uid -> monotonic time its startTime was (re)set, for a deadline finer than 1 s
        self._started: dict[str, float] = {}
        self._finished: dict[str, float] = {}
        self.store.subscribe(self.on_change)

    # -- triggers ----------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        if change.plural == "jobs":
            meta = change.obj["metadata"]
            key = (meta["namespace"], meta["name"])
            uid = meta.get("uid", "")
            if change.type == "DELETED":
                self._jobs.pop(uid, None)
                self._orphans |= self._pods.pop(uid, set())
                self._failures.pop(uid, None)
                self._started.pop(uid, None)
                self._finished.pop(uid, None)
                for purpose in ("deadline", "backoff", "ttl"):
                    timer = self._timers.pop((key, purpose), None)
                    if timer is not None:
                        timer.cancel()
            else:
                self._jobs[uid] = key
                self._dirty.add(key)
            self._schedule()
        elif change.plural == "pods":
            meta = change.obj["metadata"]
            if not meta.get("ownerReferences") and not (
                change.old is not None and change.old["metadata"].get("ownerReferences")
            ):
                return
            key = (meta["namespace"], meta["name"])
            ref = controller_of(meta, "Job") if change.type != "DELETED" else None
            uid = ref.get("uid") if ref else None
            previous = self._pod_job.pop(key, None)
            if previous is not None:
                self._pods.get(previous, set()).discard(key)
                self._touch(previous)
            if uid:
                self._pod_job[key] = uid
                self._pods.setdefault(uid, set()).add(key)
                if uid in self._jobs:
                    self._touch(uid)
                else:
                    self._orphans.add(key)
            elif change.type != "DELETED" and TRACKING_FINALIZER in (meta.get("finalizers") or ()):
                self._orphans.add(key)  # orphaned by its Job's deletion
            self._schedule()

    def _touch(self, uid: str) -> None:
        key = self._jobs.get(uid)
        if key is not None:
            self._dirty.add(key)

    def _schedule(self) -> None:
        if self._scheduled or not (self._dirty or self._orphans):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # Jobs loaded before the loop runs: start() catches up
        self._scheduled = True
        loop.call_soon(self._run)

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _later(self, key: JobKey, purpose: str, delay_s: float) -> None:
        timer = self._timers.pop((key, purpose), None)
        if timer is not None:
            timer.cancel()

        def fire() -> None:
            self._timers.pop((key, purpose), None)
            self._dirty.add(key)
            self._schedule()

        self._timers[(key, purpose)] = asyncio.get_running_loop().call_later(
            max(0.0, delay_s), fire
        )

    def _run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        orphans, self._orphans = self._orphans, set()
        for key in sorted(orphans):
            try:
                self._release_orphan(key)
            except Exception:  # keep the emulator alive; the test will see the log
                log.exception("releasing pod %s/%s failed", *key)
        for key in sorted(dirty):
            try:
                self.sync(key)
            except Exception:
                log.exception("syncing job %s/%s failed", *key)

    # -- one Job -------------------------------------------------------------------------

    def _release_orphan(self, key: JobKey) -> None:
        """A pod with the tracking finalizer whose Job is gone: drop the finalizer."""
        pod = self.store.find(PODS, *key)
        if pod is None or TRACKING_FINALIZER not in (pod["metadata"].get("finalizers") or ()):
            return
        ref = controller_of(pod["metadata"], "Job")
        if ref is not None and ref.get("uid") in self._jobs:
            return
        self._remove_finalizer(pod)

    def _remove_finalizer(self, pod: dict) -> None:
        pod = self.store.find(PODS, *_key(pod)) or {}
        meta = pod.get("metadata") or {}
        if TRACKING_FINALIZER not in (meta.get("finalizers") or ()):
            return
        new = copy.deepcopy(pod)
        new["metadata"]["finalizers"] = [
            f for f in meta.get("finalizers") or [] if f != TRACKING_FINALIZER
        ]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self.store.replace(PODS, meta["namespace"], meta["name"], new, "all", check_version=False)

    def sync(self, key: JobKey) -> None:
        job = self.store.find(JOBS, *key)
        if job is None:
            return
        uid = job["metadata"]["uid"]
        if is_finished(job):
            self._failures.pop(uid, None)
            self._schedule_ttl(key, job)
            return
        spec = job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        pods = [p for k in sorted(self._pods.get(uid, ())) if (p := self.store.find(PODS, *k))]
        active = [p for p in pods if is_active(p)]
        tracked = [p for p in pods if TRACKING_FINALIZER in (p["metadata"].get("finalizers") or ())]
        new_succeeded = [p for p in tracked if pod_phase(p) == "Succeeded"]
        new_failed = [p for p in tracked if pod_phase(p) != "Succeeded" and is_pod_failed(p, job)]
        policy = spec.get("podFailurePolicy")
        counted_failed = [
            p for p in new_failed if match_pod_failure_policy(policy, p)[0] != "Ignore"
        ]
        succeeded = status.get("succeeded", 0) + len(new_succeeded)
        failed = status.get("failed", 0) + len(counted_failed)
        self._note_failures(uid, len(new_succeeded), len(counted_failed))
        suspended = is_suspended(job)
        if status.get("startTime") is None and not suspended:
            status["startTime"] = now_rfc3339()
            self._started[uid] = time.monotonic()
        conditions = status.setdefault("conditions", [])

        # What ends the Job, if anything: (interim type, reason, message).
        ending: tuple[str, str, str] | None = None
        if (met := condition(job, "SuccessCriteriaMet")) is not None:
            ending = ("SuccessCriteriaMet", met.get("reason", ""), met.get("message", ""))
        elif (target := condition(job, "FailureTarget")) is not None:
            ending = ("FailureTarget", target.get("reason", ""), target.get("message", ""))
        else:
            fail_job = next(
                (
                    message
                    for p in new_failed
                    for action, message in [match_pod_failure_policy(policy, p)]
                    if action == "FailJob"
                ),
                None,
            )
            if fail_job is not None:
                ending = ("FailureTarget", "PodFailurePolicy", fail_job)
            elif failed > spec.get("backoffLimit", 6) or restarts_past_backoff_limit(job, pods):
                ending = (
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            elif self._past_deadline(job, status):
                ending = (
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
            elif spec.get("activeDeadlineSeconds") is not None and not suspended:
                self._later(key, "deadline", self._deadline_left(job, status))

        deleting_job = bool(job["metadata"].get("deletionTimestamp"))
        if ending is not None and ending[0] == "FailureTarget":
            # deleteActivePods: they stay tracked, and a Job that fails counts every pod
            # that had not finished as failed.
            for pod in active:
                self._delete_pod(job, pod)
            failed += sum(1 for p in tracked if p in active and p not in new_failed)
            active = []
        elif ending is None and not deleting_job:
            active = self._manage(key, job, active, succeeded)
            completions = spec.get("completions")
            done = succeeded >= completions if completions is not None else succeeded > 0
            if done and not active:
                ending = (
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
            else:
                self._suspend_condition(job, conditions, status, suspended)

        # Count finished pods and release them (the tracking finalizer goes).
        finishing = ending is not None
        for pod in tracked:
            if deleting_job or finishing or pod in new_succeeded or pod in new_failed:
                self._remove_finalizer(pod)
        status["succeeded"] = succeeded
        status["failed"] = failed
        current_pods = [
            p for k in sorted(self._pods.get(uid, ())) if (p := self.store.find(PODS, *k))
        ]
        terminating = sum(
            1
            for p in current_pods
            if p["metadata"].get("deletionTimestamp") and pod_phase(p) not in _TERMINAL
        )
        status["active"] = len([p for p in current_pods if is_active(p)])
        status["ready"] = sum(1 for p in current_pods if is_active(p) and is_ready(p))
        status["terminating"] = terminating
        status["uncountedTerminatedPods"] = {}
        if ending is not None:
            interim, reason, message = ending
            if not any(c.get("type") == interim for c in conditions):
                conditions.append(new_condition(interim, "True", reason, message))
            if terminating == 0:
                final = "Complete" if interim == "SuccessCriteriaMet" else "Failed"
                finished = new_condition(final, "True", reason, message)
                conditions.append(finished)
                if final == "Complete":
                    status["completionTime"] = finished["lastTransitionTime"]
                    self.sim.record_event(job, "Normal", "Completed", "Job completed", CONTROLLER)
                else:
                    self.sim.record_event(job, "Warning", reason, message, CONTROLLER)
                self._finished[uid] = time.monotonic()
        self._write_status(job, status)
        if is_finished(self.store.find(JOBS, *key) or {}):
            self._schedule_ttl(key, self.store.find(JOBS, *key))

    def _write_status(self, job: dict, status: dict) -> None:
        for counter in ("active", "succeeded", "failed"):
            if not status.get(counter):
                status.pop(counter, None)  # omitempty, as the API writes them
        if not status.get("conditions"):
            status.pop("conditions", None)
        if status == (job.get("status") or {}):
            return
        meta = job["metadata"]
        current = self.store.find(JOBS, meta["namespace"], meta["name"])
        if current is None:
            return
        new = copy.deepcopy(current)
        new["status"] = status
        self.store.replace(
            JOBS, meta["namespace"], meta["name"], new, "status", check_version=False
        )

    def _note_failures(self, uid: str, succeeded: int, failed: int) -> None:
        count, last = self._failures.get(uid, (0, 0.0))
        if succeeded:
            count = 0
        if failed:
            count, last = count + failed, time.monotonic()
        self._failures[uid] = (count, last)

    def _backoff_left(self, uid: str) -> float:
        count, last = self._failures.get(uid, (0, 0.0))
        if count == 0:
            return 0.0
        backoff = min(self.pod_backoff_s * 2 ** (count - 1), MAX_POD_BACKOFF_S)
        return backoff - (time.monotonic() - last)

    def _elapsed_since_start(self, job: dict, status: dict) -> float | None:
        uid = job["metadata"]["uid"]
        if uid in self._started:
            return time.monotonic() - self._started[uid]
        started = parse_time(status.get("startTime"))
        return None if started is None else time.time() - started

    def _past_deadline(self, job: dict, status: dict) -> bool:
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        if deadline is None or is_suspended(job):
            return False
        elapsed = self._elapsed_since_start(job, status)
        return elapsed is not None and elapsed >= deadline

    def _deadline_left(self, job: dict, status: dict) -> float:
        elapsed = self._elapsed_since_start(job, status) or 0.0
        return job["spec"]["activeDeadlineSeconds"] - elapsed

    def _suspend_condition(
        self, job: dict, conditions: list[dict], status: dict, suspended: bool
    ) -> None:
        existing = next((c for c in conditions if c.get("type") == "Suspended"), None)
        if suspended:
            if existing is None or existing.get("status") != "True":
                fresh = new_condition("Suspended", "True", "JobSuspended", "Job suspended")
                if existing is None:
                    conditions.append(fresh)
                else:
                    existing.update(fresh)
                self.sim.record_event(job, "Normal", "Suspended", "Job suspended", CONTROLLER)
        elif existing is not None and existing.get("status") == "True":
            existing.update(new_condition("Suspended", "False", "JobResumed", "Job resumed"))
            self.sim.record_event(job, "Normal", "Resumed", "Job resumed", CONTROLLER)
            # The deadline counts the time a Job is continuously active.
            status["startTime"] = now_rfc3339()
            self._started[job["metadata"]["uid"]] = time.monotonic()

    def _manage(self, key: JobKey, job: dict, active: list[dict], succeeded: int) -> list[dict]:
        """``manageJob``: delete what is too much, create what is missing; the active pods left."""
        if is_suspended(job):
            for pod in active:
                self._delete_uncounted(job, pod)
            return []
        want = wanted_active(job, succeeded, len(active))
        if len(active) > want:
            # Not-ready before ready, unscheduled before scheduled, pending before running.
            order = sorted(
                active,
                key=lambda p: (is_ready(p), bool(p["spec"].get("nodeName")), pod_phase(p)),
            )
            for pod in order[: len(active) - want]:
                self._delete_uncounted(job, pod)
                active.remove(pod)
            return active
        missing = want - len(active)
        if missing <= 0:
            return active
        delay = self._backoff_left(job["metadata"]["uid"])
        if delay > 0:
            self._later(key, "backoff", delay)
            return active
        for _ in range(missing):
            pod = self._create_pod(job)
            if pod is None:
                break
            active.append(pod)
        return active

    def _create_pod(self, job: dict) -> dict | None:
        try:
            pod = self.sim.create_object(PODS, job["metadata"]["namespace"], pod_from_template(job))
        except ApiError as err:
            self.sim.record_event(
                job, "Warning", "FailedCreate", f"Error creating: {err.message}", CONTROLLER
            )
            return None
        self.sim.record_event(
            job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", CONTROLLER
        )
        return pod

    def _delete_uncounted(self, job: dict, pod: dict) -> None:
        """``deleteJobPods``: the finalizer goes first, so the pod is not counted as failed."""
        self._remove_finalizer(pod)
        current = self.store.find(PODS, *_key(pod))
        if current is not None:
            self._delete_pod(job, current)

    def _delete_pod(self, job: dict, pod: dict) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        self.sim.delete_pod(pod, None)
        self.sim.record_event(
            job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", CONTROLLER
        )

    # -- TTL after finished ---------------------------------------------------------------

    def _schedule_ttl(self, key: JobKey, job: dict | None) -> None:
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or (key, "ttl") in self._timers:
            return
        uid = job["metadata"]["uid"]
        if uid in self._finished:
            left = ttl - (time.monotonic() - self._finished[uid])
        else:
            finished = condition(job, "Complete") or condition(job, "Failed") or {}
            when = parse_time(finished.get("lastTransitionTime")) or time.time()
            left = ttl - (time.time() - when)
        if left > 0:
            self._later(key, "ttl", left)
            return
        self.sim.delete_object(JOBS, job, policy="Foreground")


def _key(pod: dict) -> JobKey:
    return pod["metadata"]["namespace"], pod["metadata"]["name"]


__all__ = [
    "TRACKING_FINALIZER",
    "JobController",
    "is_finished",
    "match_pod_failure_policy",
    "pod_from_template",
    "restarts_past_backoff_limit",
    "wanted_active",
]
