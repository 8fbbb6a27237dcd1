"""Cloud GPUs in the service: RunPod's offers, cached and refreshed in the background.

Requests never wait on RunPod: the cache fetches `gpuTypes` once at start and then every
`ttl_s`; a request reads whatever the cache holds. When a refresh fails the last offers are
kept, and the answer says how old they are and why they were not refreshed (the client's
error text, which never carries the API key).

Without an API key the service still runs; the cache says cloud is not configured, and why.
`offer_filters` (pure) turns a request's query arguments into filter_offers' keywords.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from thinkube_core.flags import parse_flag
from thinkube_core.runpod import (
    ConfigurationError,
    Offer,
    RunPodClient,
    RunPodError,
    filter_offers,
    offers_from_gpu_types,
    sort_offers,
)
from thinkube_core.runpod.offers import CLOUD_TYPES

from .background import cancel_and_wait
from .reaper import HubClient, Reaper

log = logging.getLogger("thinkube.cloud")

NO_KEY_REASON = (
    "no RunPod API key: set ThinkubeService.runpod_api_key or runpod_api_key_file, or "
    "RUNPOD_API_KEY or RUNPOD_API_KEY_FILE in the service's environment"
)
FILTER_NAMES = ("min_vram_gb", "max_price_per_hour", "gpu", "cloud_type", "spot")
MAX_GPU_FILTER_LENGTH = 100


class FilterError(ValueError):
    """A query argument that is not a valid filter; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# A filter's number in ASCII digits: float() alone would also take "４", "1_000", "nan" and
# "infinity".
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def _number(name: str, text: str) -> float:
    text = text.strip()
    if not _NUMBER_RE.fullmatch(text):
        raise FilterError(name, f"{name} must be a number in digits 0-9, not {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise FilterError(name, f"{name} must be a finite number of at least 0")
    return value


def offer_filters(arguments: Mapping[str, str]) -> dict[str, Any]:
    """Query arguments (name -> text) as keywords of filter_offers. FilterError for a bad
    value; names other than FILTER_NAMES are ignored."""
    filters: dict[str, Any] = {}
    for name in ("min_vram_gb", "max_price_per_hour"):
        if name in arguments:
            filters[name] = _number(name, arguments[name])
    if "gpu" in arguments:
        gpu = arguments["gpu"].strip()
        if len(gpu) > MAX_GPU_FILTER_LENGTH:
            raise FilterError("gpu", f"gpu must be at most {MAX_GPU_FILTER_LENGTH} characters")
        if gpu:
            filters["gpu"] = gpu
    if "cloud_type" in arguments:
        cloud = arguments["cloud_type"].strip().upper()
        if cloud not in (*CLOUD_TYPES, "ALL"):
            raise FilterError("cloud_type", "cloud_type must be SECURE, COMMUNITY or ALL")
        filters["cloud_type"] = cloud
    if "spot" in arguments:
        text = arguments["spot"].strip().lower()
        flag = parse_flag(text)
        if flag is None:
            raise FilterError("spot", "spot must be true or false")
        filters["spot"] = flag
    return filters


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    text = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def make_runpod_client(
    *,
    api_key: str = "",
    key_file: str = "",
    api_url: str = "",
    rest_url: str = "",
    environ: Mapping[str, str],
) -> tuple[RunPodClient | None, str | None]:
    """A client, or None and the plain reason there is none. The key comes from `api_key`,
    `key_file`, RUNPOD_API_KEY, RUNPOD_API_KEY_FILE (never ~/.runpod: a hub's service reads
    only what its admin configured)."""
    sources = (api_key.strip(), key_file, environ.get("RUNPOD_API_KEY", "").strip())
    if not any(sources) and not environ.get("RUNPOD_API_KEY_FILE"):
        return None, NO_KEY_REASON
    try:
        client = RunPodClient(
            api_key or None,
            key_file=key_file or None,
            api_url=api_url or None,
            rest_url=rest_url or None,
            environ=environ,
            runpod_config=None,
            max_attempts=3,
        )
    except ConfigurationError as err:
        return None, str(err)
    return client, None


class OffersCache:
    """RunPod's offers (one GPU per offer), refreshed every `ttl_s` in the background."""

    def __init__(
        self,
        client: RunPodClient | None,
        *,
        ttl_s: float = 300.0,
        not_configured_reason: str | None = None,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.not_configured_reason = not_configured_reason or NO_KEY_REASON
        self.offers: list[Offer] = []
        self.fetched_at: float | None = None  # when the offers held were fetched
        self.error: str | None = None  # why the last refresh failed; None after a success
        self._task: asyncio.Task | None = None

    @property
    def configured(self) -> bool:
        return self.client is not None

    async def start(self) -> None:
        if self.client is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="thinkube-cloud-offers")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.ttl_s)

    async def refresh(self) -> None:
        """Fetch the offers once; on failure keep the last ones and remember why."""
        assert self.client is not None
        try:
            gpu_types = await self.client.gpu_types()
            offers = offers_from_gpu_types(gpu_types)
        except RunPodError as err:
            message = self.client.redact(str(err))
            if message != self.error:
                log.warning(
                    "RunPod offers not refreshed (%s); serving %s",
                    message,
                    f"the offers of {_iso(self.fetched_at)}" if self.fetched_at else "none yet",
                )
            self.error = message
        except Exception as err:  # a bug or an odd answer must not end the refresh loop
            self.error = f"the offers could not be read: {type(err).__name__}"
            log.exception("RunPod offers not refreshed")
        else:
            if self.error is not None or self.fetched_at is None:
                log.info("RunPod offers fetched: %d offers", len(offers))
            self.offers = offers
            self.fetched_at = time.time()
            self.error = None

    def state(self, **filters: Any) -> dict[str, Any]:
        """The cached offers (filtered with filter_offers' keywords, cheapest first) and
        how fresh they are: `{"configured", "offers", "fetched_at", "age_seconds",
        "error"}`, plus `reason` when cloud is not configured."""
        if not self.configured:
            return {
                "configured": False,
                "reason": self.not_configured_reason,
                "offers": [],
                "fetched_at": None,
                "age_seconds": None,
                "error": None,
            }
        spot = bool(filters.get("spot"))
        # Unfiltered: every offer, spot-only ones too (they sort last by on-demand price).
        offers = filter_offers(self.offers, **filters) if filters else self.offers
        offers = sort_offers(offers, spot=spot)
        age = round(time.time() - self.fetched_at, 3) if self.fetched_at is not None else None
        return {
            "configured": True,
            "offers": [offer.to_dict() for offer in offers],
            "fetched_at": _iso(self.fetched_at),
            "age_seconds": age,
            "error": self.error,
        }

    async def aclose(self) -> None:
        await self.stop()
        if self.client is not None:
            await self.client.aclose()


class Cloud:
    """The service's cloud part: the offers cache and, when on, the reaper."""

    def __init__(self, offers: OffersCache, reaper: Reaper | None = None) -> None:
        self.offers = offers
        self.reaper = reaper

    @classmethod
    def from_settings(
        cls,
        *,
        api_key: str,
        key_file: str,
        api_url: str,
        offers_ttl_s: float,
        rest_url: str = "",
        prefix: str,
        reaper_interval_s: float,
        reaper_grace_s: float,
        hub_api_url: str,
        hub_token: str,
        environ: Mapping[str, str],
    ) -> Cloud:
        client, reason = make_runpod_client(
            api_key=api_key, key_file=key_file, api_url=api_url, rest_url=rest_url, environ=environ
        )
        if client is None:
            # No key at all is a choice (no cloud); a key file that cannot be read is a
            # mistake. Either way the rest of the service runs.
            level = logging.INFO if reason == NO_KEY_REASON else logging.ERROR
            log.log(level, "cloud GPUs off: %s", reason)
            return cls(OffersCache(None, not_configured_reason=reason))
        log.info("cloud GPUs on: RunPod at %s", client.api_url)
        reaper = None
        if reaper_interval_s > 0:
            reaper = Reaper(
                client,
                HubClient(hub_api_url, hub_token),
                prefix=prefix,
                interval_s=reaper_interval_s,
                grace_s=reaper_grace_s,
            )
        return cls(OffersCache(client, ttl_s=offers_ttl_s), reaper)

    async def start(self) -> None:
        await self.offers.start()
        if self.reaper is not None:
            await self.reaper.start()

    async def aclose(self) -> None:
        if self.reaper is not None:
            await self.reaper.stop()
        await self.offers.aclose()


__all__ = [
    "FILTER_NAMES",
    "Cloud",
    "NO_KEY_REASON",
    "FilterError",
    "OffersCache",
    "make_runpod_client",
    "offer_filters",
]
