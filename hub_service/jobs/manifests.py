"""A GPU job as Kubernetes objects, and back. Pure.

A job runs as a `batch/v1` Job (one pod, never retried: `backoffLimit: 0`, ended by
Kubernetes at its deadline through `activeDeadlineSeconds`, deleted some time after it
finished through `ttlSecondsAfterFinished`) and a ConfigMap holding its script, mounted
read-only at /job. The pod is the one the planner placed (:func:`spec.job_pod_spec`: the
same requests, tolerations and affinity), pinned to the node the planner chose, or, when
Kueue admits jobs, left to Kueue (the Job is created suspended in its queue).

The Job carries everything needed to rebuild the queue's entry from it (labels for
selection, annotations for the full names and the request), so that a service whose
database is gone finds its jobs again: on Kubernetes the Jobs are the source of truth.

What a job produces goes into the folder THINKUBE_ARTIFACTS_DIR names. With a models claim
(`models_claim`), the pod mounts that PersistentVolumeClaim at /models and the folder is
`/models/jobs/<user>/<id>/` there, kept on the volume (the job's runner makes it before the
script runs); without one, it is a scratch folder (emptyDir) at /artifacts, gone with the
pod.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from thinkube_core.job_labels import (
    JOB_ID_LABEL,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PROJECT_LABEL,
    USER_LABEL,
    label_value,
)
from thinkube_core.kueue import positions_by_owner

from .artifact_files import user_folder
from .spec import GPU_RESOURCE, JobRequest, job_pod_spec

__all__ = [
    "MODELS_MOUNT",
    "SCRIPT_MOUNT",
    "artifacts_subpath",
    "ending_of",
    "entry_from_job",
    "job_manifest",
    "job_name",
    "job_selector",
    "pending_positions",
    "pod_node",
    "script_config_map",
]

SCRIPT_MOUNT = "/job"
MODELS_MOUNT = "/models"  # where a job's pod mounts the models claim
DATASETS_MOUNT = "/datasets"  # and the datasets claim, read-only
SCRATCH_ARTIFACTS = "/artifacts"  # the artifacts folder when no models claim is set
# Makes the artifacts folder on the models volume, then runs the script (argv[1]) as
# `python SCRIPT` would: as __main__, its folder first on sys.path, its name as argv[0].
ARTIFACTS_RUNNER = """\
import os, sys, types
try:
    os.makedirs(os.environ["THINKUBE_ARTIFACTS_DIR"], exist_ok=True)
except (KeyError, OSError) as err:
    print(f"thinkube: no artifacts folder: {err}", file=sys.stderr)
name = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(name))
main = types.ModuleType("__main__")
main.__file__ = name
sys.modules["__main__"] = main
with open(name, "rb") as script:
    source = script.read()
exec(compile(source, name, "exec"), main.__dict__)
"""
USER_ANNOTATION = "thinkube.io/user"
REQUEST_ANNOTATION = "thinkube.io/request"
CONTAINER = "job"
_CONFIG_KEY_RE = re.compile(r"[^-._A-Za-z0-9]+", re.ASCII)


def job_name(entry_id: str) -> str:
    """The name of a job's Job and ConfigMap (entry ids are short lowercase text)."""
    return f"thinkube-{entry_id}"


def job_selector() -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def artifacts_subpath(entry: Mapping[str, Any]) -> str:
    """A job's artifacts folder relative to the models volume's root: jobs/<user>/<id>
    (the user name made one safe folder name)."""
    return f"jobs/{user_folder(entry['user'])}/{entry['id']}"


def script_key(request: JobRequest) -> str:
    """The script's file name under /job: its own name, where it is a valid ConfigMap key."""
    key = _CONFIG_KEY_RE.sub("_", PurePosixPath(request.script_name).name)
    return key if key.strip(".") else "script.py"


def labels(entry: Mapping[str, Any]) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        JOB_ID_LABEL: label_value(entry["id"]),
        USER_LABEL: label_value(entry["user"]),
        PROJECT_LABEL: label_value(entry.get("project") or ""),
    }


def annotations(entry: Mapping[str, Any], stored_request: Mapping[str, Any]) -> dict[str, str]:
    """What the labels cannot hold: the full user name and the request as submitted."""
    record = {
        "id": entry["id"],
        "kind": entry.get("kind") or "job",
        "name": entry.get("name") or "",
        "project": entry.get("project") or "",
        "priority": int(entry.get("priority") or 0),
        "metadata": dict(entry.get("metadata") or {}),
        "expected_s": float(entry["expected_s"]),
        "submitted_at": entry.get("submitted_at"),
        "request": dict(stored_request),
    }
    return {
        USER_ANNOTATION: entry["user"],
        REQUEST_ANNOTATION: json.dumps(record, sort_keys=True, separators=(",", ":")),
    }


def script_config_map(
    entry: Mapping[str, Any],
    request: JobRequest,
    namespace: str,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ConfigMap with the script; `owner` (the created Job) makes Kubernetes delete it
    with the Job."""
    metadata: dict[str, Any] = {
        "name": job_name(entry["id"]),
        "namespace": namespace,
        "labels": labels(entry),
    }
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {script_key(request): request.script},
    }


def job_manifest(
    entry: Mapping[str, Any],
    request: JobRequest,
    stored_request: Mapping[str, Any],
    node: str | None,
    namespace: str,
    *,
    deadline_s: float,
    ttl_s: int | None,
    run_as_user: int = 1000,
    python: str = "python",
    kueue_queue: str = "",
    tolerations: Sequence[Mapping[str, Any]] = (),
    gpu_taint_keys: Sequence[str] = (GPU_RESOURCE,),
    models_claim: str = "",
    datasets_claim: str = "",
) -> dict[str, Any]:
    """The Job that runs `entry`'s script with `python`, on `node` (None: wherever the
    scheduler, or Kueue, puts it), ended by Kubernetes after `deadline_s`; its artifacts on
    the PersistentVolumeClaim `models_claim` (empty: in a scratch folder, see the module),
    the claim `datasets_claim` (if any) read-only at /datasets, where training jobs read
    their data."""
    name = job_name(entry["id"])
    job_labels = labels(entry)
    image = request.image
    pod = job_pod_spec(request, node, tolerations=tolerations, gpu_taint_keys=gpu_taint_keys)
    container = pod["containers"][0]
    script = f"{SCRIPT_MOUNT}/{script_key(request)}"
    mounts: list[dict[str, Any]] = [{"name": "script", "mountPath": SCRIPT_MOUNT, "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "script", "configMap": {"name": name}}]
    if models_claim:
        artifacts = f"{MODELS_MOUNT}/{artifacts_subpath(entry)}/"
        command = [python, "-c", ARTIFACTS_RUNNER, script]
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": models_claim}})
    else:
        artifacts = SCRATCH_ARTIFACTS
        command = [python, script]
        mounts.append({"name": "artifacts", "mountPath": SCRATCH_ARTIFACTS})
        volumes.append({"name": "artifacts", "emptyDir": {}})
    if datasets_claim:
        mounts.append({"name": "datasets", "mountPath": DATASETS_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "datasets",
                "persistentVolumeClaim": {"claimName": datasets_claim, "readOnly": True},
            }
        )
    container.update(
        {
            "name": CONTAINER,
            "image": image.get("image") or image.get("name"),
            "command": command,
            "env": [
                {"name": "THINKUBE_JOB_ID", "value": entry["id"]},
                {"name": "THINKUBE_ARTIFACTS_DIR", "value": artifacts},
                # Lines reach the log as they are printed, not when a buffer fills.
                {"name": "PYTHONUNBUFFERED", "value": "1"},
            ],
            "volumeMounts": mounts,
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    )
    if image.get("pull_policy"):
        container["imagePullPolicy"] = image["pull_policy"]
    pod.update(
        {
            "restartPolicy": "Never",
            # A job gets no Kubernetes credentials of its own.
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": run_as_user,
                "runAsGroup": run_as_user,
                "fsGroup": run_as_user,
            },
            "volumes": volumes,
        }
    )
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": dict(job_labels),
        "annotations": annotations(entry, stored_request),
    }
    if kueue_queue:
        metadata["labels"][KUEUE_QUEUE_LABEL] = kueue_queue
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": max(1, math.ceil(deadline_s)),
        "template": {
            "metadata": {"labels": dict(job_labels)},
            "spec": pod,
        },
    }
    if ttl_s is not None:
        spec["ttlSecondsAfterFinished"] = int(ttl_s)
    if kueue_queue:
        spec["suspend"] = True  # Kueue resumes it when it admits it
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


# -- reading them back ---------------------------------------------------------------------------


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None


def pod_node(pod: Mapping[str, Any] | None) -> str | None:
    """The node a pod is bound to (None before the scheduler bound it)."""
    return ((pod or {}).get("spec") or {}).get("nodeName") or None


def exit_code(pod: Mapping[str, Any] | None) -> int | None:
    """The job container's exit code, once it terminated."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != CONTAINER:
            continue
        for state in (status.get("state"), status.get("lastState")):
            terminated = (state or {}).get("terminated")
            if terminated and isinstance(terminated.get("exitCode"), int):
                return terminated["exitCode"]
    return None


def ending_of(job: Mapping[str, Any], pod: Mapping[str, Any] | None) -> tuple | None:
    """(exit code, reason, message) of a finished Job, as the queue names endings
    (Completed, Failed, DeadlineExceeded); None while it has not finished."""
    if _condition(job, "Complete"):
        code = exit_code(pod)
        return (0 if code is None else code), "Completed", ""
    failed = _condition(job, "Failed")
    if failed is None:
        return None
    if failed.get("reason") == "DeadlineExceeded":
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        return None, "DeadlineExceeded", f"ran past its deadline ({deadline} s) and was ended"
    code = exit_code(pod)
    if code is not None:
        return code, "Failed", f"exit code {code}"
    return None, "Failed", str(failed.get("message") or failed.get("reason") or "the Job failed")


def job_record(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """The entry a Job was made from, as its annotations keep it; None when they do not."""
    meta = job.get("metadata") or {}
    notes = meta.get("annotations") or {}
    try:
        record = json.loads(notes[REQUEST_ANNOTATION])
        user = notes[USER_ANNOTATION]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(user, str) or "id" not in record:
        return None
    return {**record, "user": user}


def entry_from_job(
    job: Mapping[str, Any],
    config_map: Mapping[str, Any] | None,
    pod: Mapping[str, Any] | None,
    placement: Mapping[str, Any],
    now: float,
) -> dict[str, Any] | None:
    """The store's entry for a Job found in Kubernetes (the service lost it): what was asked
    from the annotations, the script from the ConfigMap, what happened from the Job's and
    its pod's status. None for a Job that does not carry a thinkube request."""
    record = job_record(job)
    if record is None:
        return None
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
    started = parse_time(status.get("startTime"))
    data = (config_map or {}).get("data") or {}
    entry: dict[str, Any] = {
        "id": record["id"],
        "kind": record.get("kind") or "job",
        "user": record["user"],
        "name": record.get("name") or "",
        "project": record.get("project") or "",
        "priority": int(record.get("priority") or 0),
        "request": record.get("request") or {},
        "script": next(iter(data.values()), ""),
        "metadata": record.get("metadata") or {},
        "expected_s": float(record.get("expected_s") or 0),
        "submitted_at": record.get("submitted_at") or created or now,
        "placement": dict(placement),
        "node": pod_node(pod) or pinned_node(job),
    }
    ending = ending_of(job, pod)
    if ending is not None:
        code, reason, message = ending
        finished = next(
            (
                parse_time(c.get("lastTransitionTime"))
                for c in status.get("conditions") or []
                if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            ),
            None,
        )
        entry.update(
            status="completed" if reason == "Completed" else "failed",
            reason=reason,
            message=message,
            exit_code=code,
            started_at=started,
            finished_at=finished or now,
        )
    elif spec.get("suspend"):
        entry.update(status="queued")  # waits for Kueue
    else:
        deadline = spec.get("activeDeadlineSeconds")
        entry.update(
            status="running",
            started_at=started or created or now,
            deadline_at=(started or created or now) + deadline if deadline else None,
        )
    return entry


def pinned_node(job: Mapping[str, Any]) -> str | None:
    """The node the planner pinned a Job's pod to, if it did."""
    pod = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    affinity = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in affinity.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and len(field.get("values") or []) == 1:
                return field["values"][0]
    return None


def pending_positions(summary: Mapping[str, Any], job_ids: Mapping[str, str]) -> dict[str, int]:
    """Queue positions (1-based) from Kueue's pending workloads of one LocalQueue, by job
    id: each workload is mapped back through the Job that owns it (`job_ids`: Job name →
    job id)."""
    by_job = positions_by_owner(summary, "Job")
    return {job_ids[name]: position for name, position in by_job.items() if name in job_ids}
