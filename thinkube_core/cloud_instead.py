"""When the lab has no room for a GPU server: the cheapest RunPod offer that would run the
same choice now, within the person's price cap, and how to start it in one click. Pure.

An offer fits a lab choice when it has the same number of GPUs, at least the GPU memory of
the chosen lab GPU (when that is known), is in stock on RunPod, and its on-demand price
(spot with `spot=True`) passes the person's cap (`price_problem`, the one price check of a
cloud choice). A choice without GPUs has no cloud offer: RunPod rents GPU machines.

The one click is a link to the hub's spawn URL with the choice as query options
(`/hub/spawn/<user>?opt-where=cloud:...`), which ThinkubeSpawner reads as it reads its
form; the check at submit then checks the cloud choice like any other (the cap again, the
offer still listed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from .runpod.offers import Offer, price_problem, sort_offers

# ThinkubeSpawner's user_options: where a cloud choice runs is `cloud:<offer key>`.
CLOUD_PREFIX = "cloud:"
ON_DEMAND, SPOT = "on-demand", "spot"
# What a lab choice keeps when it moves to the cloud (the rest is the offer's).
_KEPT = ("profile", "image", "cpu", "memory")


def cloud_offer_instead(
    gpus: int,
    gpu_memory_mib: int | None,
    offers: Iterable[Offer],
    cap: float,
    spot: bool = False,
) -> Offer | None:
    """The cheapest offer that runs a lab choice of `gpus` GPUs of `gpu_memory_mib` each
    (None: unknown) now, within `cap` USD/h; None when there is none (or `gpus` is 0)."""
    if gpus <= 0 or cap <= 0:
        return None
    fitting = [
        offer
        for offer in offers
        if offer.gpu_count == gpus
        and offer.in_stock
        and price_problem(offer, spot, cap) is None
        and (not gpu_memory_mib or (offer.vram_gb or 0) * 1024 >= gpu_memory_mib)
    ]
    cheapest = sort_offers(fitting, spot=spot)
    return cheapest[0] if cheapest else None


def _article(name: str) -> str:
    """'an' before a vowel sound: a word's vowel, or an acronym's letter said with one
    ("an RTX 4090", "an A100", "an H100", "a Tesla T4")."""
    first = name.split(" ", 1)[0]
    if first.isupper() or any(c.isdigit() for c in first):
        return "an" if first[:1] in "AEFHILMNORSX8" else "a"
    return "an" if first[:1].upper() in "AEIOU" else "a"


def offer_phrase(offer: Offer, spot: bool = False) -> str:
    """'An RTX 4090 on RunPod is free now at $0.69/h'."""
    name = (
        offer.display_name if offer.gpu_count == 1 else f"{offer.gpu_count}x {offer.display_name}"
    )
    price = offer.price(spot) or 0.0
    pricing = " spot" if spot else ""
    text = f"{_article(name)} {name} on RunPod is free now at ${price:.2f}/h{pricing}"
    return f"{text[0].upper()}{text[1:]}"


def offer_sentence(offer: Offer, spot: bool = False) -> str:
    """'An RTX 4090 on RunPod is free now at $0.69/h — start there instead.'"""
    return f"{offer_phrase(offer, spot)} — start there instead."


def cloud_user_options(
    user_options: Mapping[str, Any], offer: Offer, spot: bool = False
) -> dict[str, str]:
    """The same choice on `offer`: the image, CPU and memory kept, the GPUs the offer's."""
    options = {k: str(user_options[k]) for k in _KEPT if user_options.get(k) not in (None, "")}
    options.update(
        where=CLOUD_PREFIX + offer.key,
        pricing=SPOT if spot else ON_DEMAND,
        gpus=str(offer.gpu_count),
    )
    return options


def spawn_url(hub_base_url: str, user: str, server_name: str, options: Mapping[str, str]) -> str:
    """The hub's spawn URL that starts `user`'s server with `options` in one click (the
    hub's `opt-` query options)."""
    path = f"{hub_base_url.rstrip('/')}/spawn/{quote(user, safe='')}"
    if server_name:
        path += f"/{quote(server_name, safe='')}"
    return f"{path}?{urlencode({f'opt-{k}': v for k, v in options.items()})}"


__all__ = [
    "CLOUD_PREFIX",
    "cloud_offer_instead",
    "cloud_user_options",
    "offer_phrase",
    "offer_sentence",
    "spawn_url",
]
