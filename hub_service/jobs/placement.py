"""Where a job runs: on this hub's own nodes (the queue's planner places it), or on a
RunPod pod rented for it (no local GPU is waited for). Pure.

A submission names a cloud placement in `where`:

- `cloud:<offer>`, a RunPod offer exactly as the spawn form's cloud choices name it
  (`cloud:SECURE:NVIDIA GeForce RTX 4090:1`: cloud, GPU type, GPU count of the offer);
- `runpod`: the cheapest offers within the person's cloud limit, of the GPU named by
  `gpu_model` (a RunPod GPU type, or part of its name: `RTX 4090`) when given.

`pricing` is `on-demand` (the default) or `spot`, as in the form; `gpus` (1 by default) is
how many GPUs the pod gets, and the price checked against the person's limit is the offer's
for that many. Anything else, or nothing, is the hub's own nodes (`local`).

The job's script reaches the pod compressed in one environment variable: Linux refuses a
program whose environment holds one `NAME=value` string over 128 KiB, and RunPod states no
larger allowance, so a RunPod job's script may take at most MAX_SCRIPT_ENV_BYTES of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from thinkube_core.job_runner import encode_script
from thinkube_core.runpod.offers import NO_CLOUD_FOR_YOU, Offer, price_problem, sort_offers

from .errors import JobError, whole_number

__all__ = [
    "CLOUD_PREFIX",
    "MAX_SCRIPT_ENV_BYTES",
    "RUNPOD",
    "CloudChoices",
    "cloud_placement",
    "offers_of",
    "wants_cloud",
]

CLOUD_PREFIX = "cloud:"
RUNPOD = "runpod"
LOCAL = "local"
ON_DEMAND, SPOT = "on-demand", "spot"
# The most of the pod's environment the script may take, compressed and base64-encoded:
# half of Linux's limit on one environment string (128 KiB), the rest left for the runner.
MAX_SCRIPT_ENV_BYTES = 64 * 1024
# The RunPod image a cloud job runs in when it names no catalog image.
DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
EXAMPLE = "cloud:SECURE:NVIDIA GeForce RTX 4090:1"


@dataclass(frozen=True)
class CloudChoices:
    """What one person may rent for a job now: RunPod's offers as the service last fetched
    them (one GPU each), their price limit in USD/h (0: none), why cloud jobs cannot run on
    this hub at all (None: they can), the image a job naming none runs in, and how many of
    the matching offers are tried when one has no machine free."""

    offers: Sequence[Offer] = ()
    cap: float = 0.0
    unavailable: str | None = "RunPod is not set up for jobs on this hub"
    default_image: str = DEFAULT_IMAGE
    attempts: int = 3


def wants_cloud(fields: Mapping[str, Any]) -> bool:
    """Whether the submission asks for a RunPod pod; JobError for a `where` that is
    neither that nor the hub's own nodes."""
    where = fields.get("where")
    if where in (None, ""):
        return False
    if not isinstance(where, str):
        raise JobError("where", "where must be text: 'local', 'runpod' or a cloud offer.")
    text = where.strip()
    if text.lower() == LOCAL:
        return False
    if text.lower() == RUNPOD or text.startswith(CLOUD_PREFIX):
        return True
    raise JobError(
        "where",
        f"where must be 'local' (this hub's nodes), 'runpod', or a RunPod offer as the spawn "
        f"form names it (like {EXAMPLE!r}); got {text[:60]!r}.",
    )


def _gpus(fields: Mapping[str, Any], maximum: int) -> int:
    message = f"A RunPod job runs on a GPU pod: gpus must be a whole number from 1 to {maximum}."
    return whole_number(fields, "gpus", 1, 1, maximum, message)


def scaled(offer: Offer, gpus: int) -> Offer:
    """The offer for `gpus` GPUs (RunPod prices per GPU)."""
    if gpus == offer.gpu_count:
        return offer

    def per(price: float | None) -> float | None:
        return None if price is None else round(price / offer.gpu_count * gpus, 4)

    return replace(
        offer,
        gpu_count=gpus,
        price_per_hour=per(offer.price_per_hour),
        spot_price_per_hour=per(offer.spot_price_per_hour),
    )


def cloud_placement(
    fields: Mapping[str, Any], script: str, choices: CloudChoices, max_gpus: int = 8
) -> dict[str, Any]:
    """The placement a cloud submission asks for, checked against what this person may rent
    now: `{"kind": "runpod", "gpus", "spot", "offers": [offer, ...], "gpu_model"}`, the
    offers (for that many GPUs) in the order they are tried. JobError otherwise."""
    if choices.unavailable:
        raise JobError("where", f"Cloud jobs cannot run on this hub now: {choices.unavailable}.")
    if choices.cap <= 0:
        raise JobError("where", NO_CLOUD_FOR_YOU)
    pricing = fields.get("pricing") or ON_DEMAND
    if pricing not in (ON_DEMAND, SPOT):
        raise JobError(
            "pricing", f"pricing must be {ON_DEMAND!r} or {SPOT!r}; got {str(pricing)[:20]!r}."
        )
    spot = pricing == SPOT
    gpus = _gpus(fields, max_gpus)
    encoded = len(encode_script(script))
    if encoded > MAX_SCRIPT_ENV_BYTES:
        raise JobError(
            "script",
            f"The script is too large for a RunPod job: compressed it takes {encoded // 1024} "
            f"KiB of the pod's environment, which holds at most {MAX_SCRIPT_ENV_BYTES // 1024} "
            "KiB of it. Make it smaller (read data from elsewhere) or run it on this hub's "
            "nodes.",
        )
    where = str(fields["where"]).strip()
    if where.startswith(CLOUD_PREFIX):
        key = where[len(CLOUD_PREFIX) :]
        offer = next((o for o in choices.offers if o.key == key), None)
        if offer is None:
            raise JobError(
                "where",
                f"RunPod has no offer {key[:80]!r} now (GET api/v1/cloud/offers lists them).",
            )
        chosen = scaled(offer, gpus)
        problem = price_problem(chosen, spot, choices.cap)
        if problem:
            raise JobError("where", problem)
        candidates = [chosen]
    else:
        candidates = _within_cap(fields, choices, gpus, spot)
    return {
        "kind": RUNPOD,
        "gpus": gpus,
        "spot": spot,
        "gpu_model": candidates[0].display_name,
        "offers": [offer.to_dict() for offer in candidates],
    }


def _within_cap(
    fields: Mapping[str, Any], choices: CloudChoices, gpus: int, spot: bool
) -> list[Offer]:
    wanted = fields.get("gpu_model")
    if wanted not in (None, "") and not isinstance(wanted, str):
        raise JobError("gpu_model", "gpu_model must be text.")
    needle = (wanted or "").strip().lower()
    matching = [
        offer
        for offer in (scaled(o, gpus) for o in choices.offers)
        if not needle or needle in offer.display_name.lower() or needle in offer.gpu_type_id.lower()
    ]
    if needle and not matching:
        raise JobError(
            "gpu_model",
            f"RunPod offers no GPU called {wanted[:60]!r} now.",  # type: ignore[index]
        )
    affordable = [o for o in matching if price_problem(o, spot, choices.cap) is None]
    if not affordable:
        what = f"{gpus} GPU{'s' if gpus != 1 else ''}" + (f" of {wanted}" if needle else "")
        pricing = "spot" if spot else "on demand"
        raise JobError(
            "gpu_model" if needle else "where",
            f"No RunPod offer of {what} is within your cloud limit of ${choices.cap:.2f}/h "
            f"({pricing}) now.",
        )
    in_stock = [o for o in affordable if o.in_stock] or affordable
    return sort_offers(in_stock, spot=spot)[: max(1, choices.attempts)]


def offers_of(placement: Mapping[str, Any]) -> list[Offer]:
    """The offers a stored placement tries, in order."""
    return [Offer(**raw) for raw in placement.get("offers") or []]
