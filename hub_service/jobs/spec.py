"""A GPU job as submitted, checked, and the pod it runs as. Pure.

A submission (`POST api/v1/jobs`, the compatibility route, the CLI or the Python API) names
a script and options; :func:`check_submission` turns them into a :class:`JobRequest` or says,
naming the field, what is wrong (nothing is queued then). :func:`job_pod_spec` is the pod
a job runs as, from which the feasibility filter reads where it may run and what it asks
for, and from which the Kubernetes backend builds its Job: one pod description for both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from thinkube_core.quantity import QuantityError, parse_quantity

from .errors import JobError, whole_number
from .placement import CloudChoices, cloud_placement, wants_cloud

__all__ = [
    "JobError",
    "JobLimits",
    "JobRequest",
    "check_submission",
    "job_pod_spec",
    "parse_duration",
]

GPU_RESOURCE = "nvidia.com/gpu"
GIB = 1 << 30
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}", re.ASCII)
_METADATA_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", re.ASCII)


@dataclass(frozen=True)
class JobLimits:
    """What the admin allows (the service's `jobs_*` settings)."""

    max_script_bytes: int = 1 << 20
    max_expected_s: float = 7 * 86400
    max_gpus: int = 8
    max_cpu: float = 64
    max_memory: int = 512 * GIB
    default_cpu: float = 2
    default_memory: int = 8 * GIB
    max_metadata_entries: int = 32
    max_metadata_value: int = 256


@dataclass(frozen=True)
class JobRequest:
    script: str
    script_name: str
    expected_s: float
    gpus: int
    gpu_model: str | None  # the product label value (nvidia.com/gpu.product), or None
    gpu_resource: str
    cpu: float
    memory: int  # bytes
    image: Mapping[str, Any]  # the catalog entry
    name: str
    project: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    # Where it runs when not on this hub's nodes (see placement.py): a RunPod pod.
    placement: Mapping[str, Any] | None = None


def parse_duration(value: Any) -> float:
    """Seconds from `600`, `"600"`, `"10m"`, `"1.5h"`, `"2d"`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if not match:
            raise ValueError("not a duration")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError("not a duration")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError("not a duration")
    return seconds


def _text(fields: Mapping[str, Any], name: str, default: str = "", limit: int = 63) -> str:
    value = fields.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise JobError(name, f"{name} must be text.")
    value = value.strip()
    if value and not _NAME_RE.fullmatch(value):
        raise JobError(
            name,
            f"{name} may hold letters, digits, spaces, '.', '_' and '-', at most {limit} "
            "characters, starting with a letter or digit.",
        )
    return value


def _count(fields: Mapping[str, Any], name: str, default: int, maximum: int) -> int:
    message = f"{name} must be a whole number from 0 to {maximum}."
    return whole_number(fields, name, default, 0, maximum, message)


def _cpu(fields: Mapping[str, Any], limits: JobLimits) -> float:
    value = fields.get("cpu")
    if value in (None, ""):
        return limits.default_cpu
    try:
        cores = parse_quantity(value if not isinstance(value, bool) else "x")
    except QuantityError:
        raise JobError("cpu", "cpu must be a number of cores, like 2 or 500m.") from None
    if not 0 < cores <= Decimal(str(limits.max_cpu)):
        raise JobError("cpu", f"cpu must be more than 0 and at most {limits.max_cpu:g}.")
    return float(cores)


def _memory(fields: Mapping[str, Any], limits: JobLimits) -> int:
    value = fields.get("memory")
    if value in (None, ""):
        return limits.default_memory
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{value}Gi"  # a bare number is GiB, as in the spawn form
    try:
        size = parse_quantity(value if not isinstance(value, bool) else "x")
    except QuantityError:
        raise JobError("memory", "memory must be a size, like 16Gi or 8 (GiB).") from None
    if not 0 < size <= limits.max_memory:
        raise JobError(
            "memory", f"memory must be more than 0 and at most {limits.max_memory // GIB} GiB."
        )
    return int(size)


def _metadata(fields: Mapping[str, Any], limits: JobLimits) -> dict[str, str]:
    value = fields.get("metadata") or {}
    if not isinstance(value, Mapping):
        raise JobError("metadata", "metadata must map names to text.")
    if len(value) > limits.max_metadata_entries:
        raise JobError(
            "metadata", f"metadata may have at most {limits.max_metadata_entries} entries."
        )
    checked = {}
    for key, text in value.items():
        if not isinstance(key, str) or not _METADATA_KEY_RE.fullmatch(key):
            raise JobError("metadata", "metadata names are letters, digits, '.', '_' and '-'.")
        if not isinstance(text, str) or len(text) > limits.max_metadata_value:
            raise JobError(
                "metadata",
                f"metadata[{key}] must be text of at most {limits.max_metadata_value} characters.",
            )
        checked[key] = text
    return checked


def check_submission(
    fields: Mapping[str, Any],
    script: str | bytes | None,
    images: Sequence[Mapping[str, Any]],
    nodes: Sequence[Mapping[str, Any]],
    gpu_models: Sequence[Mapping[str, Any]],
    limits: JobLimits = JobLimits(),
    cloud: CloudChoices | None = None,
) -> JobRequest:
    """A submission's fields and script, checked; JobError names the first thing wrong.
    `images` is the catalog, `nodes` and `gpu_models` the availability documents, `cloud`
    what the person may rent on RunPod (a cloud `where`, see placement.py)."""
    if script is None or script == "" or script == b"":
        raise JobError("script", "A job needs a script (a file, or the script as text).")
    if isinstance(script, bytes):
        if len(script) > limits.max_script_bytes:
            raise JobError("script", f"The script is over {limits.max_script_bytes // 1024} KiB.")
        try:
            script = script.decode("utf-8")
        except UnicodeDecodeError:
            raise JobError("script", "The script must be UTF-8 text.") from None
    if len(script.encode("utf-8", "replace")) > limits.max_script_bytes:
        raise JobError("script", f"The script is over {limits.max_script_bytes // 1024} KiB.")
    try:
        script.encode("utf-8")
    except UnicodeEncodeError:
        raise JobError("script", "The script must be valid text.") from None

    raw_expected = fields.get("expected_time")
    if raw_expected in (None, ""):
        raise JobError("expected_time", "expected_time is needed: seconds, or like '10m'.")
    try:
        expected = parse_duration(raw_expected)
    except ValueError:
        raise JobError(
            "expected_time", "expected_time must be seconds, or like '10m' or '2h'."
        ) from None
    if not 0 < expected <= limits.max_expected_s:
        raise JobError(
            "expected_time",
            f"expected_time must be more than 0 and at most {limits.max_expected_s / 3600:g} h.",
        )

    placement = (
        cloud_placement(fields, script, cloud or CloudChoices(), limits.max_gpus)
        if wants_cloud(fields)
        else None
    )
    if placement is not None:
        return _cloud_request(fields, script, expected, images, limits, placement, cloud)

    gpus = _count(fields, "gpus", 0, limits.max_gpus)
    gpu_model, resource = None, GPU_RESOURCE
    wanted = fields.get("gpu_model")
    if wanted not in (None, ""):
        if not isinstance(wanted, str):
            raise JobError("gpu_model", "gpu_model must be text.")
        model = _find_model(wanted.strip(), gpu_models)
        if model is None:
            known = ", ".join(sorted({m["model"] for m in gpu_models})) or "none"
            raise JobError(
                "gpu_model", f"Unknown GPU model {wanted[:60]!r}; this hub has: {known}."
            )
        if not gpus:
            raise JobError("gpus", "A GPU model needs at least 1 GPU.")
        gpu_model, resource = model.get("product"), model["resource"]
    if gpus and _most_gpus_on_a_node(nodes, resource, gpu_model) < gpus:
        raise JobError(
            "gpus", f"No node here has {gpus} GPUs{' of that model' if gpu_model else ''}."
        )

    image_name = fields.get("image")
    entry = _find_image(image_name, images, gpus > 0)
    if entry is None:
        raise JobError(
            "image",
            f"Unknown image {str(image_name)[:60]!r}." if image_name else "No image is available.",
        )
    return JobRequest(
        gpus=gpus,
        gpu_model=gpu_model,
        gpu_resource=resource,
        image=entry,
        **_described(fields, script, expected, limits),
    )


def _described(
    fields: Mapping[str, Any], script: str, expected: float, limits: JobLimits
) -> dict[str, Any]:
    """What a job's request holds wherever it runs: its script, time, size and names."""
    return {
        "script": script,
        "script_name": _text(fields, "script_name", "script.py") or "script.py",
        "expected_s": expected,
        "cpu": _cpu(fields, limits),
        "memory": _memory(fields, limits),
        "name": _text(fields, "name"),
        "project": _text(fields, "project"),
        "metadata": _metadata(fields, limits),
        "priority": 0,
    }


def _cloud_request(
    fields: Mapping[str, Any],
    script: str,
    expected: float,
    images: Sequence[Mapping[str, Any]],
    limits: JobLimits,
    placement: Mapping[str, Any],
    cloud: CloudChoices | None,
) -> JobRequest:
    """A job for a RunPod pod: the pod's GPUs, a catalog image when one is named (else the
    hub's RunPod image); no node of this hub is looked at."""
    image_name = fields.get("image")
    if image_name in (None, ""):
        default = (cloud or CloudChoices()).default_image
        entry: Mapping[str, Any] | None = {"name": "runpod-default", "image": default}
    else:
        entry = _find_image(image_name, images, True)
        if entry is None:
            raise JobError("image", f"Unknown image {str(image_name)[:60]!r}.")
    return JobRequest(
        gpus=int(placement["gpus"]),
        gpu_model=placement.get("gpu_model"),
        gpu_resource=GPU_RESOURCE,
        image=entry,
        placement=dict(placement),
        **_described(fields, script, expected, limits),
    )


def _most_gpus_on_a_node(
    nodes: Sequence[Mapping[str, Any]], resource: str, product: str | None
) -> int:
    """The most GPUs of this resource (and product, if given) any one node has."""
    return max(
        (
            r.get("allocatable", 0)
            for node in nodes
            for r in (node.get("gpu") or {}).get("resources") or ()
            if r.get("name") == resource and product in (None, r.get("product"))
        ),
        default=0,
    )


def _find_model(wanted: str, gpu_models: Sequence[Mapping[str, Any]]) -> Mapping | None:
    """A model as the form names it: its key (`gpu:nvidia-a100-sxm4-80gb`), its product
    label, or its name."""
    key = wanted.removeprefix("gpu:").lower()
    for model in gpu_models:
        product = str(model.get("product") or "")
        names = {product.lower(), str(model["model"]).lower(), _slug(product or model["model"])}
        if key in names or wanted.lower() in names:
            return model
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _find_image(name: Any, images: Sequence[Mapping[str, Any]], gpu: bool) -> Mapping | None:
    if name in (None, ""):
        defaults = [i for i in images if i.get("default")]
        gpu_images = [i for i in images if (i.get("metadata") or {}).get("gpu_required")]
        preferred = gpu_images if gpu else defaults
        return (preferred or defaults or list(images) or [None])[0]
    if not isinstance(name, str):
        return None
    return next((i for i in images if i.get("name") == name), None)


def job_pod_spec(
    request: JobRequest,
    node: str | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    gpu_taint_keys: Sequence[str] = (GPU_RESOURCE,),
) -> dict[str, Any]:
    """The scheduling part of the pod a job runs as (raw JSON), pinned to `node` when given:
    requests (= limits, GPUs as extended resources), the admin's tolerations plus the GPU
    nodes' when it uses GPUs, required affinity to the chosen GPU model and node."""
    resources = {"cpu": _cpu_text(request.cpu), "memory": str(request.memory)}
    if request.gpus:
        resources[request.gpu_resource] = str(request.gpus)
    all_tolerations = [dict(t) for t in tolerations]
    if request.gpus:
        all_tolerations += [{"key": key, "operator": "Exists"} for key in gpu_taint_keys]
    term: dict[str, Any] = {}
    if request.gpu_model:
        label = (
            f"{request.gpu_resource}.product"
            if request.gpu_resource.startswith("nvidia.com/mig-")
            else "nvidia.com/gpu.product"
        )
        term["matchExpressions"] = [{"key": label, "operator": "In", "values": [request.gpu_model]}]
    if node:
        term["matchFields"] = [{"key": "metadata.name", "operator": "In", "values": [node]}]
    spec: dict[str, Any] = {
        "containers": [
            {"name": "job", "resources": {"requests": dict(resources), "limits": dict(resources)}}
        ]
    }
    if all_tolerations:
        spec["tolerations"] = all_tolerations
    if term:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
    return spec


def _cpu_text(cores: float) -> str:
    return f"{round(cores * 1000)}m"
