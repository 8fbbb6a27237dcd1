"""The page of a notebook server request that waits for a GPU: where it stands, an estimate
of when it starts, Leave the queue, and, when the lab stays full, the cheapest cloud offer
that runs the same choice within the person's cap. Pure (the handler is
`waiting_handlers.py`'s).

Complete without JavaScript: the page refreshes itself every WAIT_REFRESH_SECONDS and its
form leaves the queue; a request that starts moves the page on to the hub's. The inline
script follows the request's pushed changes instead (`api/v1/waiting/{id}/events`, or the
API every couple of seconds where the stream cannot be had), and moves on to the server as
soon as it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from thinkube_core.cloud_instead import (
    cloud_offer_instead,
    cloud_user_options,
    offer_sentence,
    spawn_url,
)
from thinkube_core.runpod.offers import Offer

from ..rendering import content_security_policy, read_template, template_environment
from .store import QUEUED

__all__ = [
    "cloud_offer_for",
    "cloud_offer_of",
    "cloud_start_url",
    "render_waiting_page",
    "waiting_page_view",
]

WAIT_REFRESH_SECONDS = 15
POLL_SECONDS = 2


WAITING_CSS = read_template("waiting.css")
WAITING_JS = read_template("waiting.js")
CONTENT_SECURITY_POLICY = content_security_policy(WAITING_CSS, WAITING_JS)
_environment = template_environment()


def cloud_offer_of(entry: Mapping[str, Any], offers: Iterable[Offer]) -> Offer | None:
    """The cheapest RunPod offer that runs a waiting request's choice now within the
    person's cap (what the spawner sent when it registered), or None: the same choice of
    offer as the spawn form's refusal makes (`thinkube_core.cloud_instead`)."""
    if entry.get("status") != QUEUED:
        return None
    request = entry.get("request") or {}
    cloud = request.get("cloud") or {}
    rentable = [o for o in offers if o.gpu_type_id and o.cloud_type in ("SECURE", "COMMUNITY")]
    return cloud_offer_instead(
        int(request.get("gpus") or 0),
        cloud.get("gpu_memory_mib"),
        rentable,
        float(cloud.get("cap") or 0.0),
    )


def cloud_start_url(entry: Mapping[str, Any], offer: Offer, hub_prefix: str) -> str:
    """The hub's one-click start of the request's choice on `offer`: the link the spawn
    form's refusal offers (the hub's spawn URL with the choice as `opt-` options)."""
    options = (entry.get("request") or {}).get("user_options") or {}
    return spawn_url(
        hub_prefix, entry["user"], entry.get("name") or "", cloud_user_options(options, offer)
    )


def cloud_offer_for(
    entry: Mapping[str, Any], offers: Iterable[Offer], action: str, xsrf: str
) -> dict[str, Any] | None:
    """What the waiting page offers instead, as `{"text", "action", "fields"}`: a form that
    posts the offer's key to `action` (which leaves the queue and starts there), or None."""
    offer = cloud_offer_of(entry, offers)
    if offer is None:
        return None
    return {
        "text": offer_sentence(offer),
        "action": action,
        "fields": {"_xsrf": xsrf, "offer": offer.key},
    }


_CHOICE_LABELS = (("image", "Image"), ("cpu", "CPUs"), ("memory", "Memory (GiB)"), ("gpus", "GPUs"))


def waiting_page_view(
    view: Mapping[str, Any],
    links: Mapping[str, str],
    xsrf: str,
    api: str,
    cloud_offer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the template shows: the request's API view, the links, the form's token."""
    options = view.get("user_options") or {}
    expires = view.get("expires_at")
    return {
        # "2026-12-06 20:17 UTC", from the view's ISO time
        "expires_text": f"{expires[:10]} {expires[11:16]} UTC" if expires else None,
        "view": view,
        "links": dict(links),
        "xsrf": xsrf,
        "api": api,
        "refresh_seconds": WAIT_REFRESH_SECONDS if view["status"] == "waiting" else 0,
        "poll_seconds": POLL_SECONDS,
        "choice": [(label, options[key]) for key, label in _CHOICE_LABELS if options.get(key)],
        "cloud_offer": dict(cloud_offer) if cloud_offer else None,
    }


def _encode(text: str) -> bytes:
    """UTF-8, lone surrogates (which JSON can carry in a name) replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def render_waiting_page(page: Mapping[str, Any]) -> tuple[bytes, str]:
    """The page's HTML and the Content-Security-Policy it is served with."""
    template = _environment.get_template("waiting.html")
    html = template.render(page=page, css=WAITING_CSS, script=WAITING_JS)
    return _encode(html), CONTENT_SECURITY_POLICY
