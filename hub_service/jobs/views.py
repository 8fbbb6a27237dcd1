"""What the jobs API answers, shaped from the store's entries and the queue's plan. Pure.

Two sets of shapes over the same jobs: this service's own (`job_view`, `result_view`,
`queue_view`, `node_statistics`) and those of the job server people already script
against (`compat_*`), whose states are pending, running, completed, failed and cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .store import LOST, QUEUED, RUNNING

__all__ = [
    "COMPAT_STATUS",
    "ESTIMATE_BASIS",
    "compat_node",
    "compat_result",
    "compat_status",
    "iso",
    "job_view",
    "node_statistics",
    "queue_view",
    "result_view",
]

ESTIMATE_BASIS = "an estimate from the expected times of the running and queued jobs"

# This service's states as the old job server named them.
COMPAT_STATUS = {
    "queued": "pending",
    "running": "running",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "lost": "failed",
}


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _estimate(where: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    eta = where.get("eta")
    if eta is None:
        return None
    return {
        "start_at": iso(max(eta, now)),
        "starts_in_seconds": round(max(0.0, eta - now), 1),
        "estimate": True,
        "basis": ESTIMATE_BASIS,
    }


def job_view(entry: Mapping[str, Any], where: Mapping[str, Any], now: float) -> dict[str, Any]:
    """One job as `GET api/v1/jobs/{id}` answers it: what was asked, where it stands."""
    request = entry.get("request") or {}
    image = request.get("image") or {}
    finished, started = entry.get("finished_at"), entry.get("started_at")
    return {
        "id": entry["id"],
        "name": entry.get("name") or "",
        "user": entry["user"],
        "project": entry.get("project") or "",
        "metadata": dict(entry.get("metadata") or {}),
        "status": entry["status"],
        "reason": entry.get("reason"),
        "message": entry.get("message"),
        "exit_code": entry.get("exit_code"),
        "expected_time": entry["expected_s"],
        "gpus": request.get("gpus", 0),
        "gpu_model": request.get("gpu_model"),
        "cpu": request.get("cpu"),
        "memory": request.get("memory"),
        "image": image.get("name"),
        "script_name": request.get("script_name"),
        "submitted_at": iso(entry.get("submitted_at")),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "deadline_at": iso(entry.get("deadline_at")) if entry["status"] == RUNNING else None,
        "node": entry.get("node"),
        "position": where.get("position"),
        "expected_node": where.get("expected_node"),
        "eta": _estimate(where, now) if entry["status"] == QUEUED else None,
    }


def result_view(
    entry: Mapping[str, Any], output: Mapping[str, Any], streams: str, now: float
) -> dict[str, Any]:
    """`GET api/v1/jobs/{id}/result`: how it ended (or that it has not yet), its output,
    its timings. `streams` says whether stdout and stderr are `separate` or `combined`
    (then all of the output is in `stdout`)."""
    submitted, started, finished = (
        entry.get("submitted_at"),
        entry.get("started_at"),
        entry.get("finished_at"),
    )
    request = entry.get("request") or {}
    placement = entry.get("placement") or {}
    waited_until = started if started is not None else (finished or now)
    return {
        "id": entry["id"],
        "status": entry["status"],
        "finished": entry["status"] not in (QUEUED, RUNNING),
        "exit_code": entry.get("exit_code"),
        "reason": entry.get("reason"),
        "message": entry.get("message"),
        "streams": streams,
        "stdout": output.get("stdout", ""),
        "stderr": output.get("stderr", "") if streams == "separate" else None,
        "truncated": bool(output.get("truncated")),
        "node": entry.get("node"),
        "gpus": request.get("gpus", 0),
        "gpu_ids": list(placement.get("gpus") or []),
        "timings": {
            "submitted_at": iso(submitted),
            "started_at": iso(started),
            "finished_at": iso(finished),
            "queued_seconds": round(waited_until - submitted, 3) if submitted else None,
            "run_seconds": (round((finished or now) - started, 3) if started is not None else None),
        },
    }


def queue_view(
    order: Sequence[Mapping[str, Any]],
    wheres: Mapping[str, Mapping[str, Any]],
    visible: Iterable[str],
    now: float,
) -> list[dict[str, Any]]:
    """The waiting jobs in queue order. Everyone sees the order (who waits, for what);
    the ids, names and projects only of the jobs the viewer may see."""
    visible = set(visible)
    items = []
    for entry in order:
        where = wheres.get(entry["id"]) or {}
        request = entry.get("request") or {}
        mine = entry["id"] in visible
        items.append(
            {
                "position": where.get("position"),
                "id": entry["id"] if mine else None,
                "name": (entry.get("name") or "") if mine else None,
                "project": (entry.get("project") or "") if mine else None,
                "user": entry["user"],
                "kind": entry.get("kind", "job"),
                "gpus": request.get("gpus", 0),
                "gpu_model": request.get("gpu_model"),
                "expected_time": entry["expected_s"],
                "submitted_at": iso(entry.get("submitted_at")),
                "expected_node": where.get("expected_node"),
                "eta": _estimate(where, now),
            }
        )
    return items


def node_statistics(
    nodes: Sequence[Mapping[str, Any]],
    running: Sequence[Mapping[str, Any]],
    queued: Sequence[Mapping[str, Any]],
    expected_node: Mapping[str, str | None],
    now: float,
) -> list[dict[str, Any]]:
    """Per node: its GPUs free and busy, the jobs running there and queued for it, and the
    work ahead of it in seconds (what the queue places by). Nodes with GPUs, and any node
    a job runs on or waits for (every node where none has GPUs)."""
    per_node: dict[str, dict[str, Any]] = {}

    def stats(name: str) -> dict[str, Any]:
        if name not in per_node:
            per_node[name] = {
                "running_jobs": 0,
                "queued_jobs": 0,
                "running_remaining_seconds": 0.0,
                "queued_seconds": 0.0,
            }
        return per_node[name]

    for entry in running:
        if not entry.get("node"):
            continue
        held = stats(entry["node"])
        held["running_jobs"] += 1
        started = entry.get("started_at") or now
        held["running_remaining_seconds"] += max(0.0, started + entry["expected_s"] - now)
    for entry in queued:
        node = expected_node.get(entry["id"])
        if node:
            held = stats(node)
            held["queued_jobs"] += 1
            held["queued_seconds"] += entry["expected_s"]
    items = []
    any_gpus = any(node.get("gpu") for node in nodes)
    for node in nodes:
        gpu = node.get("gpu") or {}
        name = node["name"]
        if any_gpus and not gpu and name not in per_node:
            continue  # a CPU node among GPU nodes, with no job
        counts = per_node.get(name) or stats(name)
        total = int(gpu.get("schedulable_count") or 0)
        free = int(gpu.get("free_count") or 0)
        items.append(
            {
                "name": name,
                "schedulable": bool(node.get("schedulable")),
                "gpu_model": gpu.get("model"),
                "gpus": {"total": total, "free": free, "busy": max(0, total - free)},
                "running_jobs": counts["running_jobs"],
                "queued_jobs": counts["queued_jobs"],
                "running_remaining_seconds": round(counts["running_remaining_seconds"], 1),
                "queued_seconds": round(counts["queued_seconds"], 1),
                "work_ahead_seconds": round(
                    counts["running_remaining_seconds"] + counts["queued_seconds"], 1
                ),
            }
        )
    items.sort(key=lambda item: item["name"])
    return items


# --- the old job server's shapes --------------------------------------------------------------


def compat_status(entry: Mapping[str, Any], where: Mapping[str, Any]) -> dict[str, Any]:
    metadata = entry.get("metadata") or {}
    return {
        "job_id": entry["id"],
        "status": COMPAT_STATUS.get(entry["status"], entry["status"]),
        "node_id": entry.get("node") or where.get("expected_node"),
        "queue_position": where.get("position"),
        "user_id": entry["user"],
        "project_id": entry.get("project") or None,
        "competition_id": metadata.get("competition_id"),
        "expected_time": entry["expected_s"],
        "submitted_at": iso(entry.get("submitted_at")),
        "started_at": iso(entry.get("started_at")),
        "completed_at": iso(entry.get("finished_at")),
        "exit_code": entry.get("exit_code"),
        "lost": entry["status"] == LOST,
    }


def compat_result(entry: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "job_id": entry["id"],
        "status": COMPAT_STATUS.get(entry["status"], entry["status"]),
        "stdout": output.get("stdout", ""),
        "stderr": output.get("stderr", "") or "",
        "exit_code": entry.get("exit_code"),
    }


def compat_node(statistics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "node_id": statistics["name"],
        "status": "online" if statistics["schedulable"] else "offline",
        "gpu_model": statistics["gpu_model"],
        "gpus_free": statistics["gpus"]["free"],
        "running_jobs": statistics["running_jobs"],
        "queue_length": statistics["queued_jobs"],
        "total_queued_time": statistics["work_ahead_seconds"],
    }
