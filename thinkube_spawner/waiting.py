"""Joining the hub's GPU queue from a start whose choice is full: what ThinkubeSpawner and
ThinkubeLocalSpawner share (thinkube_core.waiting is what they share with the service)."""

from __future__ import annotations

from typing import Any

from thinkube_core.waiting import scheduling_view

from .availability import ServiceUnavailable
from .choice import Choice
from .errors import service_unavailable_error, spawn_error, waiting_redirect
from .form import wait_label
from .labels import server_label


async def wait_in_line(
    spawner: Any,
    choice: Choice,
    why: str,
    pod_spec: dict,
    single_machine: bool,
    cloud_cap: float = 0.0,
) -> Exception:
    """Register a waiting request for this full choice with the service's GPU queue, as
    the person (this start's server token is theirs): the error that sends them to its
    page (the hub answers 303 there), or the refusal to show on the form (why they may not
    wait). With `cloud_cap` (the person's cloud price cap, USD/h), the waiting page may
    offer a cloud GPU within it that runs the same choice now."""
    body: dict[str, Any] = {
        "server_name": spawner.name,
        "user_options": choice.as_user_options(),
        "pod": scheduling_view(pod_spec),
        "label": wait_label(choice.placement, single_machine),
    }
    if cloud_cap > 0:
        memory = choice.placement.gpu_memory_mib
        body["cloud"] = {"cap": cloud_cap, "gpu_memory_mib": int(memory) if memory else None}
    try:
        status, answer = await spawner.availability.register_waiting(spawner.api_token, body)
    except ServiceUnavailable as err:
        return service_unavailable_error(err)
    view = answer.get("waiting") if status == 409 else answer
    if status in (201, 409) and isinstance(view, dict) and view.get("page"):
        place = f"#{view['position']} in the queue" if view.get("position") else "in the queue"
        lead = "You already wait for this server" if status == 409 else f"{why} You wait"
        message = (
            f"{lead} for {view.get('label')}: {place}, expected start "
            f"{view.get('eta_text') or 'unknown'}. Your server starts by itself when a GPU "
            f"frees; see your place or leave the queue at {view['page']}."
        )
        spawner.log.info(
            "%s waits for %s (%s)", server_label(spawner), body["label"], view.get("id")
        )
        return waiting_redirect(message, view["page"])
    message = answer.get("error") or f"The GPU queue answered HTTP {status}."
    spawner.log.info("%s may not wait: %s", server_label(spawner), message)
    return spawn_error(f"{why} {message}", reason="waiting", status_code=409)
