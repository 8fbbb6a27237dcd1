"""What a user asks for when starting a cloud server, checked against live offers: pure
functions (no I/O) for RemoteRunPodSpawner's form and its REST `user_options`.

REST `user_options` (POST /hub/api/users/<name>/server):

    {"offer": "SECURE:NVIDIA GeForce RTX 4090:1", "spot": false, "fallback": true}
    {"gpu": "4090", "min_vram_gb": 24, "max_price_per_hour": 1.0, "cloud_type": "SECURE"}
    {}                                   # the cheapest offer within the user's cap

An `offer` is an offer key as the form (and `thinkube cloud offers --json`) shows it. With
`fallback`, when that offer has no capacity the next cheapest offers with at least as much
GPU memory, within the cap, are tried. Filters pick the cheapest matching offers, tried in
price order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from thinkube_core.flags import parse_flag
from thinkube_core.runpod.offers import (
    CLOUD_TYPES,
    NO_CLOUD_FOR_YOU,
    Offer,
    filter_offers,
    price_problem,
    sort_offers,
)

OPTION_NAMES = (
    "offer",
    "spot",
    "fallback",
    "gpu",
    "min_vram_gb",
    "max_price_per_hour",
    "cloud_type",
)


class OptionsError(ValueError):
    """A request that cannot be served as asked; the message is for the user."""


@dataclass(frozen=True)
class CloudRequest:
    offer_key: str | None = None
    spot: bool = False
    fallback: bool = False
    gpu: str | None = None
    min_vram_gb: float | None = None
    max_price_per_hour: float | None = None
    cloud_type: str | None = None

    def as_user_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"spot": self.spot}
        if self.offer_key:
            options["offer"] = self.offer_key
            options["fallback"] = self.fallback
        for name in ("gpu", "min_vram_gb", "max_price_per_hour", "cloud_type"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        return options


def _flag(name: str, value: Any) -> bool:
    flag = parse_flag(value, empty=False)  # an unticked checkbox
    if flag is None:
        raise OptionsError(f"'{name}' must be true or false.")
    return flag


def _number(name: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise OptionsError(f"'{name}' must be a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionsError(f"'{name}' must be a number.") from None
    if not math.isfinite(number) or number < 0:
        raise OptionsError(f"'{name}' must be a number of at least 0.")
    return number


def _text(name: str, value: Any, limit: int = 200) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise OptionsError(f"'{name}' must be a short text.")
    return value.strip() or None


def parse_user_options(options: Mapping[str, Any] | None) -> CloudRequest:
    """A CloudRequest from `user_options`; OptionsError for unknown names or bad values."""
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in OPTION_NAMES)
    if unknown:
        raise OptionsError(
            f"Unknown option {unknown[0]!r}; cloud servers take {', '.join(OPTION_NAMES)}."
        )
    cloud_type = _text("cloud_type", options.get("cloud_type"))
    if cloud_type is not None:
        cloud_type = cloud_type.upper()
        if cloud_type not in (*CLOUD_TYPES, "ALL"):
            raise OptionsError("'cloud_type' must be SECURE, COMMUNITY or ALL.")
    return CloudRequest(
        offer_key=_text("offer", options.get("offer")),
        spot=_flag("spot", options.get("spot", False)),
        fallback=_flag("fallback", options.get("fallback", False)),
        gpu=_text("gpu", options.get("gpu")),
        min_vram_gb=_number("min_vram_gb", options.get("min_vram_gb")),
        max_price_per_hour=_number("max_price_per_hour", options.get("max_price_per_hour")),
        cloud_type=None if cloud_type == "ALL" else cloud_type,
    )


def options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The form's fields (lists of strings, as JupyterHub passes them) as user_options."""

    def first(name: str) -> str | None:
        values = formdata.get(name) or []
        return values[0] if values else None

    options: dict[str, Any] = {
        "spot": first("spot") == "on",
        "fallback": first("fallback") == "on",
    }
    offer = first("offer")
    if offer:
        options["offer"] = offer
    return options


def _money(value: float) -> str:
    return f"${value:.2f}/h"


def candidate_offers(
    offers: Sequence[Offer], request: CloudRequest, cap: float, attempts: int
) -> list[Offer]:
    """The offers to try for `request`, in order (at most `attempts`), all within `cap`
    (USD/h) at the price the request pays (spot or on demand). OptionsError if none."""
    if cap <= 0:
        raise OptionsError(NO_CLOUD_FOR_YOU)
    spot = request.spot
    kind = "spot" if spot else "on-demand"
    limit = cap if request.max_price_per_hour is None else min(cap, request.max_price_per_hour)
    if request.offer_key:
        chosen = next((o for o in offers if o.key == request.offer_key), None)
        if chosen is None:
            raise OptionsError(
                f"Unknown cloud offer {request.offer_key!r}: it is not offered now. Reload "
                "the page to see the current offers."
            )
        problem = price_problem(chosen, spot, cap)
        if problem:
            raise OptionsError(problem)
        tried = [chosen]
        if request.fallback:
            others = filter_offers(
                (o for o in offers if o.key != chosen.key and o.gpu_count == chosen.gpu_count),
                min_vram_gb=chosen.vram_gb or 0,
                max_price_per_hour=limit,
                spot=spot,
            )
            tried += sort_offers(others, spot=spot)
        return tried[: max(1, attempts)]
    matching = sort_offers(
        filter_offers(
            offers,
            min_vram_gb=request.min_vram_gb,
            max_price_per_hour=limit,
            gpu=request.gpu,
            cloud_type=request.cloud_type,
            spot=spot,
        ),
        spot=spot,
    )
    if not matching:
        raise OptionsError(
            f"No cloud GPU offer matches your request within {_money(limit)} {kind}."
        )
    return matching[: max(1, attempts)]


def offers_within(offers: Sequence[Offer], cap: float) -> list[Offer]:
    """Offers a user may pick: on demand or spot within the cap, cheapest first."""
    kept = [
        o
        for o in offers
        if any(p is not None and p <= cap for p in (o.price_per_hour, o.spot_price_per_hour))
    ]
    return sort_offers(kept)


def render_form(
    offers: Sequence[Offer],
    cap: float,
    *,
    previous: Mapping[str, Any] | None = None,
    problem: str = "",
) -> str:
    """The spawn form: one radio button per offer within the cap, spot and fallback
    checkboxes. Everything shown is escaped."""
    previous = previous or {}
    parts = ['<div class="thinkube-cloud">']
    if problem:
        parts.append(f'<div class="alert alert-warning">{escape(problem)}</div>')
    if cap <= 0:
        parts.append(f"<p>{escape(NO_CLOUD_FOR_YOU)}</p></div>")
        return "".join(parts)
    shown = offers_within(offers, cap)
    if not shown and not problem:
        parts.append(
            f"<p>No cloud GPU is offered within your cap of {escape(_money(cap))} now.</p>"
        )
    if shown:
        parts.append(
            f"<p>Cloud GPUs on RunPod within your cap of {escape(_money(cap))}. A cloud "
            "server is billed while it runs, and is not on the lab's shared storage: save "
            "your work elsewhere before stopping it.</p>"
        )
        selected = previous.get("offer") or shown[0].key
        for index, offer in enumerate(shown):
            checked = " checked" if offer.key == selected else ""
            note = ""
            if offer.price_per_hour is None or offer.price_per_hour > cap:
                note = " (spot only within your cap)"
            parts.append(
                '<div class="radio"><label>'
                f'<input type="radio" name="offer" id="cloud-offer-{index}" '
                f'value="{escape(offer.key, quote=True)}"{checked}> '
                f"RunPod {escape(offer.cloud_type.lower())} cloud: "
                f"{escape(offer.label())}{escape(note)}</label></div>"
            )
        spot = " checked" if previous.get("spot") else ""
        fallback = " checked" if previous.get("fallback", True) else ""
        parts.append(
            '<div class="checkbox"><label><input type="checkbox" name="spot"'
            f"{spot}> Spot (interruptible, cheaper: RunPod may stop it)</label></div>"
            '<div class="checkbox"><label><input type="checkbox" name="fallback"'
            f"{fallback}> If it is out of stock, try the next cheapest offers with as much "
            "GPU memory</label></div>"
        )
    parts.append("</div>")
    return "".join(parts)


__all__ = [
    "OPTION_NAMES",
    "CloudRequest",
    "OptionsError",
    "candidate_offers",
    "offers_within",
    "options_from_form",
    "parse_user_options",
    "render_form",
]
