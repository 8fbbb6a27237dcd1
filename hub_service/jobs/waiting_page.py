"""The page of a notebook server request that waits for a GPU: where it stands, an estimate
of when it starts, and Leave the queue. Pure (the handler is `waiting_handlers.py`'s).

Complete without JavaScript: the page refreshes itself every WAIT_REFRESH_SECONDS and its
form leaves the queue; a request that starts moves the page on to the hub's. The inline
script follows the request through the API every couple of seconds instead, and moves on as
soon as the server starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..rendering import content_security_policy, read_template, template_environment

__all__ = ["cloud_offer_for", "render_waiting_page", "waiting_page_view"]

WAIT_REFRESH_SECONDS = 15
POLL_SECONDS = 2


WAITING_CSS = read_template("waiting.css")
WAITING_JS = read_template("waiting.js")
CONTENT_SECURITY_POLICY = content_security_policy(WAITING_CSS, WAITING_JS)
_environment = template_environment()


def cloud_offer_for(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """Where the waiting page offers a cloud GPU instead: the cheapest offer that fits the
    same choice within the person's price cap, as `{"text", "action", "fields"}` (a form
    posted to start there), or None. No offer is made yet; the page shows one when this
    returns it."""
    return None


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
