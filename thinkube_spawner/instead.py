"""If the lab stays full: the cloud offer a refused or failed lab choice could start on
instead, from the menu's offers and the person's cap, and the words and link that say so.
Pure; the choice of offer is thinkube_core.cloud_instead's, which any page may call.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any

from thinkube_core.cloud_instead import (
    cloud_offer_instead,
    cloud_user_options,
    offer_phrase,
    spawn_url,
)
from thinkube_core.runpod.offers import Offer

from .choice import CLOUD_PREFIX
from .menu import Menu


def lab_gpu_request(user_options: Mapping[str, Any], menu: Menu) -> tuple[int, int | None] | None:
    """(GPUs, memory of the chosen GPU in MiB) of a lab choice, read from its options as
    far as the menu knows them; None for a cloud choice or one that names nothing known."""
    where = str(user_options.get("where") or "")
    placement = menu.placement(where)
    if placement is None or placement.kind == "cloud" or where.startswith(CLOUD_PREFIX):
        return None
    try:
        gpus = Decimal(str(user_options.get("gpus") or 0).strip())
    except InvalidOperation:
        return None
    if not gpus.is_finite() or gpus != gpus.to_integral_value() or gpus <= 0:
        return None
    return int(gpus), placement.gpu_memory_mib


def cloud_instead(user_options: Mapping[str, Any], menu: Menu, cap: float) -> Offer | None:
    """The cheapest offer of the menu that runs this lab choice now within `cap` USD/h."""
    request = lab_gpu_request(user_options, menu)
    if request is None or cap <= 0:
        return None
    offers = [p.offer for p in menu.placements if p.kind == "cloud" and p.offer and not p.disabled]
    return cloud_offer_instead(request[0], request[1], offers, cap)


def instead_link(
    offer: Offer, user_options: Mapping[str, Any], hub_base_url: str, user: str, server: str
) -> str:
    """The one-click start of the same choice on `offer`."""
    return spawn_url(hub_base_url, user, server, cloud_user_options(user_options, offer))


def instead_html(offer: Offer, link: str) -> str:
    """'An RTX 4090 on RunPod is free now at $0.69/h — <a>start there instead</a>.'"""
    return (
        f'{escape(offer_phrase(offer))} — <a id="thinkube-cloud-instead" '
        f'href="{escape(link)}">start there instead</a>.'
    )


def error_html(message: str, offer: Offer, link: str) -> str:
    """A refusal or failure with the cloud offer after it, for the hub's pages."""
    return f"{escape(message)}<br>{instead_html(offer, link)}"


def form_notice_html(offer: Offer, link: str) -> str:
    """What the spawn form says above its fields after a refusal for lack of room."""
    return (
        f'<p class="alert alert-info" id="thinkube-cloud-instead-notice">'
        f"The lab has no room for this choice now. {instead_html(offer, link)}</p>"
    )
