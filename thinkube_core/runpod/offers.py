"""Cloud GPU offers from RunPod's `gpuTypes`: pure functions, no I/O.

An offer is one GPU type in one cloud (SECURE or COMMUNITY) with its on-demand price, its
spot (interruptible) price and its stock, for a given GPU count. Prices are per hour for
the whole offer (`gpu_count` GPUs); RunPod quotes them per GPU.

Where a GPU type carries `lowestPrice` (the client asks for it once per cloud, as the
aliases `secureLowestPrice` / `communityLowestPrice`), its `uninterruptablePrice`,
`minimumBidPrice` and `stockStatus` win over the catalogue prices (`securePrice`,
`communitySpotPrice`, ...), which are the fallback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

SECURE = "SECURE"
COMMUNITY = "COMMUNITY"
CLOUD_TYPES = (SECURE, COMMUNITY)
_STOCK_RANK = {"high": 0, "medium": 1, "low": 2}
# What RunPod's stockStatus says when nothing of a GPU type can be rented: null, or words.
_NO_STOCK = {"", "none", "out of stock", "out_of_stock"}


@dataclass(frozen=True)
class Offer:
    gpu_type_id: str
    display_name: str
    vram_gb: int | None
    cloud_type: str  # SECURE | COMMUNITY
    price_per_hour: float | None  # on demand, for gpu_count GPUs; None: not offered
    spot_price_per_hour: float | None  # lowest spot bid, for gpu_count GPUs; None: no spot
    stock: str | None  # "High" | "Medium" | "Low" as RunPod says it; None: unknown or none
    gpu_count: int = 1

    def price(self, spot: bool = False) -> float | None:
        return self.spot_price_per_hour if spot else self.price_per_hour

    @property
    def in_stock(self) -> bool:
        """Whether RunPod reports any of it free to rent (stockStatus High, Medium or Low);
        RunPod reports no stockStatus (null) for what cannot be rented now."""
        return (self.stock or "").strip().lower() not in _NO_STOCK

    def bid_per_gpu(self) -> float | None:
        """The spot bid to place for this offer: its minimum bid, per GPU."""
        if self.spot_price_per_hour is None:
            return None
        return round(self.spot_price_per_hour / self.gpu_count, 4)

    @property
    def key(self) -> str:
        """A stable identifier for forms and caches: `SECURE:NVIDIA GeForce RTX 4090:1`."""
        return f"{self.cloud_type}:{self.gpu_type_id}:{self.gpu_count}"

    def label(self) -> str:
        """`RTX 4090 24 GB, $0.69/h on demand, $0.35/h spot, stock high`."""
        parts = [
            self.display_name if self.gpu_count == 1 else f"{self.gpu_count}x {self.display_name}"
        ]
        if self.vram_gb:
            parts[0] += f" {self.vram_gb} GB"
        if self.price_per_hour is not None:
            parts.append(f"${self.price_per_hour:.2f}/h on demand")
        if self.spot_price_per_hour is not None:
            parts.append(f"${self.spot_price_per_hour:.2f}/h spot")
        parts.append(f"stock {self.stock.lower()}" if self.stock else "stock unknown")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _price(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value > 0 else None


def _lowest(gpu_type: Mapping[str, Any], cloud: str) -> Mapping[str, Any] | None:
    alias = "secureLowestPrice" if cloud == SECURE else "communityLowestPrice"
    if alias in gpu_type:
        return gpu_type.get(alias)
    return gpu_type.get("lowestPrice")


def offers_from_gpu_types(
    gpu_types: Iterable[Mapping[str, Any]], gpu_count: int = 1
) -> list[Offer]:
    """One offer per GPU type and cloud that RunPod sells it in, at a known price."""
    if gpu_count < 1:
        raise ValueError("gpu_count must be at least 1")
    offers: list[Offer] = []
    for gpu_type in gpu_types:
        if not gpu_type or not gpu_type.get("id"):
            continue
        for cloud in CLOUD_TYPES:
            prefix = "secure" if cloud == SECURE else "community"
            if not gpu_type.get(f"{prefix}Cloud"):
                continue
            lowest = _lowest(gpu_type, cloud) or {}
            on_demand = _price(lowest.get("uninterruptablePrice")) or _price(
                gpu_type.get(f"{prefix}Price")
            )
            spot = _price(lowest.get("minimumBidPrice")) or _price(
                gpu_type.get(f"{prefix}SpotPrice")
            )
            if on_demand is None and spot is None:
                continue
            offers.append(
                Offer(
                    gpu_type_id=gpu_type["id"],
                    display_name=gpu_type.get("displayName") or gpu_type["id"],
                    vram_gb=gpu_type.get("memoryInGb"),
                    cloud_type=cloud,
                    price_per_hour=round(on_demand * gpu_count, 4) if on_demand else None,
                    spot_price_per_hour=round(spot * gpu_count, 4) if spot else None,
                    stock=lowest.get("stockStatus") or None,
                    gpu_count=gpu_count,
                )
            )
    return offers


def filter_offers(
    offers: Iterable[Offer],
    *,
    min_vram_gb: float | None = None,
    max_price_per_hour: float | None = None,
    gpu: str | None = None,
    cloud_type: str | None = None,
    spot: bool = False,
) -> list[Offer]:
    """Keep what matches. `spot` keeps offers with a spot price and applies the price cap
    to it; otherwise the cap applies to the on-demand price. `gpu` is a case-insensitive
    substring of the display name or the GPU type id. `cloud_type` SECURE, COMMUNITY or
    ALL/None."""
    wanted_cloud = (cloud_type or "ALL").upper()
    if wanted_cloud not in (*CLOUD_TYPES, "ALL"):
        raise ValueError(f"cloud_type must be SECURE, COMMUNITY or ALL, not {cloud_type!r}")
    needle = (gpu or "").strip().lower()
    kept = []
    for offer in offers:
        price = offer.price(spot)
        if price is None:
            continue
        if wanted_cloud != "ALL" and offer.cloud_type != wanted_cloud:
            continue
        if min_vram_gb is not None and (offer.vram_gb or 0) < min_vram_gb:
            continue
        if max_price_per_hour is not None and price > max_price_per_hour:
            continue
        if (
            needle
            and needle not in offer.display_name.lower()
            and needle not in offer.gpu_type_id.lower()
        ):
            continue
        kept.append(offer)
    return kept


def sort_offers(offers: Iterable[Offer], *, spot: bool = False) -> list[Offer]:
    """Cheapest first; at one price, better stock first, then more memory, then by name."""

    def key(offer: Offer) -> tuple:
        price = offer.price(spot)
        return (
            price if price is not None else float("inf"),
            _STOCK_RANK.get((offer.stock or "").lower(), 3),
            -(offer.vram_gb or 0),
            offer.display_name,
            offer.cloud_type,
        )

    return sorted(offers, key=key)


def select_offers(
    gpu_types: Iterable[Mapping[str, Any]],
    *,
    gpu_count: int = 1,
    min_vram_gb: float | None = None,
    max_price_per_hour: float | None = None,
    gpu: str | None = None,
    cloud_type: str | None = None,
    spot: bool = False,
) -> list[Offer]:
    """offers_from_gpu_types, filter_offers and sort_offers in one."""
    offers = offers_from_gpu_types(gpu_types, gpu_count)
    kept = filter_offers(
        offers,
        min_vram_gb=min_vram_gb,
        max_price_per_hour=max_price_per_hour,
        gpu=gpu,
        cloud_type=cloud_type,
        spot=spot,
    )
    return sort_offers(kept, spot=spot)


__all__ = [
    "CLOUD_TYPES",
    "COMMUNITY",
    "SECURE",
    "Offer",
    "cloud_enabled",
    "filter_offers",
    "offers_from_gpu_types",
    "price_cap_for",
    "price_problem",
    "select_offers",
    "sort_offers",
]


NO_CLOUD_FOR_YOU = "Cloud GPUs are not available to you on this hub."


def price_problem(offer: Offer, spot: bool, cap: float) -> str | None:
    """Why a person with price cap `cap` (USD/h) may not rent `offer` at this pricing, in
    words; None when they may. The one check of a cloud choice's price, for every spawner."""
    if cap <= 0:
        return NO_CLOUD_FOR_YOU
    pricing = "spot" if spot else "on demand"
    price = offer.price(spot)
    if price is None:
        kind = "spot" if spot else "on-demand"
        return f"{offer.display_name} has no {kind} price on RunPod right now."
    if price > cap:
        return (
            f"{offer.display_name} costs ${price:.2f}/h {pricing}, over your cloud limit of "
            f"${cap:.2f}/h."
        )
    return None


def price_cap_for(
    user: str,
    groups: Iterable[str],
    default_cap: float,
    user_caps: Mapping[str, float],
    group_caps: Mapping[str, float],
) -> float:
    """The most a user may spend per hour on a cloud server or job (0: no cloud).

    A cap set for the user wins; else the highest cap of the user's groups that have one;
    else the default cap."""
    if user in user_caps:
        return max(0.0, float(user_caps[user]))
    caps = [float(group_caps[g]) for g in groups if g in group_caps]
    if caps:
        return max(0.0, max(caps))
    return max(0.0, float(default_cap))


def cloud_enabled(
    default_cap: float, user_caps: Mapping[str, float], group_caps: Mapping[str, float]
) -> bool:
    """Whether anyone at all may start a cloud server."""
    return any(float(c) > 0 for c in [default_cap, *user_caps.values(), *group_caps.values()])
