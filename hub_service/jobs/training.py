"""Fine-tuning jobs: `POST api/v1/training-jobs` checks a training config and queues an
ordinary GPU job that runs the trainer (`python -m thinkube_train`, thinkube_train/).

What reaches the job is its script, as for any job (the standard input of a process on one
machine, a ConfigMap on Kubernetes): :func:`training_script` writes a small Python script
that holds the checked config, and the dataset sent with it (compressed), writes them to a
private temporary folder and runs the trainer on them. The job is marked with the metadata
`kind: training` (and `algorithm`, `base_model`, `dataset`), so that lists and views can
tell it from other jobs (`GET api/v1/jobs?metadata=kind=training`).

Everything is checked before anything is queued, each refusal a 400 naming the field: the
job options as `POST api/v1/jobs` checks them, the image (its catalog entry must say
`training: true`: it has thinkube-hub[train]), the config (thinkube_train.config, against
the placement: int8/int4 need a GPU; the shared models and datasets volumes; the admin's
catalog of models), and a dataset sent with it (JSON or JSON Lines, with the fields the
config names in every example). `?dry_run=1` answers where it would run now (a node, or its
position in the queue), or for a cloud offer the most it may cost, and queues nothing.
"""

from __future__ import annotations

import base64
import pprint
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from jupyterhub.utils import url_path_join

from thinkube_core.runpod.offers import Offer
from thinkube_train.config import (
    ConfigError,
    Placement,
    TrainingConfig,
    check_config,
    check_records,
    parse_config_text,
    read_records,
)

from ..bodies import BodyError, parse_json_body
from .handlers import FIELDS_ROOM_BYTES, JobsAPIHandler, form_text_fields
from .spec import JobError, JobRequest
from .views import ESTIMATE_BASIS, iso

__all__ = [
    "CLOUD_PREFIX",
    "JOB_OPTIONS",
    "TRAINING_KIND",
    "TrainingJobsHandler",
    "TrainingSubmission",
    "dataset_file_name",
    "where_summary",
    "can_train",
    "cost_ceiling",
    "training_image",
    "training_metadata",
    "training_routes",
    "training_script",
]

TRAINING_KIND = "training"  # metadata["kind"] of a fine-tuning job
# The options of `POST api/v1/jobs` a training job takes beside its config, and where it
# runs: `where` as the spawn form names a cloud offer (`cloud:<offer key>`), `pricing`
# on-demand or spot.
JOB_OPTIONS = (
    "expected_time",
    "gpus",
    "gpu_model",
    "cpu",
    "memory",
    "image",
    "metadata",
    "where",
    "pricing",
)
CLOUD_PREFIX = "cloud:"
PRICINGS = ("on-demand", "spot")
SCRIPT_NAME = "thinkube_train_job.py"
MAX_CONFIG_BYTES = 64 * 1024
TRUE_WORDS = ("1", "true", "yes")


# --- pure parts -------------------------------------------------------------------------------


def can_train(image: Mapping[str, Any]) -> bool:
    """Whether a catalog entry says its image can run the trainer (it has the `train`
    extra): `metadata.training` true."""
    return (image.get("metadata") or {}).get("training") is True


def training_image(
    name: Any, images: Sequence[Mapping[str, Any]], gpus: bool
) -> Mapping[str, Any] | None:
    """The image a training job runs in: the one named (whether or not it can train: the
    caller says why not), else the catalog's images that can train, GPU ones first for a
    job with GPUs, the default first otherwise; None when none can."""
    if name not in (None, ""):
        return next((i for i in images if i.get("name") == name), None)
    able = [i for i in images if can_train(i)]
    if not able:
        return None

    def rank(image: Mapping[str, Any]) -> tuple:
        gpu_image = bool((image.get("metadata") or {}).get("gpu_required"))
        return (gpu_image != gpus, not image.get("default"))

    return sorted(able, key=rank)[0]


def training_metadata(
    config: TrainingConfig, uploaded: bool, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The job's metadata: what it is (`kind: training`) and what it trains, beside the
    person's own labels (which may not set `kind`)."""
    dataset = "(sent with the job)" if uploaded else config.dataset.path
    return {
        **dict(extra or {}),
        "kind": TRAINING_KIND,
        "algorithm": config.algorithm,
        "base_model": config.base_model[:256],
        "dataset": dataset[:256],
    }


def training_script(
    config: TrainingConfig, dataset: bytes | None = None, dataset_name: str | None = None
) -> str:
    """The job's script: the config (and the dataset, compressed) written to a private
    temporary folder, then `python -m thinkube_train` on them, its exit status the job's."""
    title = config.name or f"{config.algorithm} on {config.base_model}"
    literal = pprint.pformat(config.to_dict(), sort_dicts=False, width=96)
    if dataset is not None:
        packed = base64.b64encode(zlib.compress(dataset, 9)).decode("ascii")
        lines = "\n".join(packed[i : i + 96] for i in range(0, len(packed), 96))
        data = f'DATASET_NAME = {dataset_name!r}\nDATASET = """\n{lines}\n"""\n'
    else:
        data = "DATASET_NAME = None\nDATASET = ''\n"
    return f'''"""thinkube fine-tuning job: {_one_line(title)}.

Made by the hub from the submitted config: it writes the config (and the dataset sent with
it) to a private temporary folder and runs `python -m thinkube_train` on them, which prints
its progress and writes the adapter to $THINKUBE_ARTIFACTS_DIR (else ./artifacts).
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

CONFIG = {literal}

{data}

def main() -> int:
    folder = tempfile.mkdtemp(prefix="thinkube-train-")
    try:
        if DATASET_NAME:
            with open(os.path.join(folder, DATASET_NAME), "wb") as out:
                out.write(zlib.decompress(base64.b64decode(DATASET)))
        config = os.path.join(folder, "training_config.json")
        with open(config, "w") as out:
            json.dump(CONFIG, out, indent=2)
        return subprocess.call([sys.executable, "-m", "thinkube_train", config])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


sys.exit(main())
'''


def _one_line(text: str) -> str:
    return " ".join(text.replace('"""', "'''").split())[:120]


def dataset_file_name(data: bytes) -> str:
    """A dataset sent with a job keeps its format in its name: a JSON array or JSON Lines."""
    return "dataset.json" if data.lstrip()[:1] == b"[" else "dataset.jsonl"


def cost_ceiling(
    offer: Offer, spot: bool, expected_s: float, deadline_factor: float
) -> dict[str, Any] | None:
    """The most a job may cost on `offer`: its price per hour times the longest it may run
    (its expected time times the deadline factor); None when the offer has no such price."""
    price = offer.price(spot)
    if price is None:
        return None
    hours = expected_s * deadline_factor / 3600
    return {
        "offer": offer.key,
        "display_name": offer.display_name,
        "gpu_count": offer.gpu_count,
        "pricing": "spot" if spot else "on-demand",
        "price_per_hour": price,
        "expected_seconds": expected_s,
        "deadline_factor": deadline_factor,
        "max_cost_usd": round(price * hours, 4),
    }


def _estimate(eta: float | None, now: float) -> dict[str, Any] | None:
    if eta is None:
        return None
    return {
        "start_at": iso(max(eta, now)),
        "starts_in_seconds": round(max(0.0, eta - now), 1),
        "estimate": True,
        "basis": ESTIMATE_BASIS,
    }


def where_summary(where: Mapping[str, Any]) -> str:
    if where.get("node"):
        return f"starts now on {where['node']}"
    position = where.get("position")
    return f"queued, position {position}" if position else "queued"


# --- the route --------------------------------------------------------------------------------


class TrainingSubmission:
    """A request's parts: the job options, the config (a dict), a dataset sent with it."""

    def __init__(
        self, options: dict[str, Any], config: dict[str, Any], dataset: bytes | None
    ) -> None:
        self.options = options
        self.config = config
        self.dataset = dataset

    @classmethod
    def parse(cls, content_type: str, body: bytes) -> TrainingSubmission:
        media_type = content_type.split(";")[0].strip().lower()
        if media_type == "application/json":
            document = parse_json_body(body, content_type)
            if not isinstance(document, dict):
                raise BodyError(400, None, "the body must be a JSON object")
            config = document.pop("config", None)
            if "dataset" in document:
                raise BodyError(
                    400,
                    "dataset",
                    "send a dataset file as a form (multipart/form-data, part `dataset`), "
                    "or name it in the config (dataset.path)",
                )
            return cls(cls._options(document), cls._config(config), None)
        if media_type == "multipart/form-data":
            fields, files = form_text_fields(content_type, body)
            config = fields.pop("config", None)
            if files.get("config"):
                config = files["config"][0].body
            dataset = None
            if files.get("dataset"):
                dataset = files["dataset"][0].body
            elif "dataset" in fields:
                dataset = fields.pop("dataset").encode("utf-8")
            return cls(cls._options(fields), cls._config(config), dataset)
        raise BodyError(
            415,
            None,
            "send the training job as JSON (Content-Type: application/json) or as a form "
            "(multipart/form-data)",
        )

    @staticmethod
    def _options(fields: dict[str, Any]) -> dict[str, Any]:
        for name in fields:
            if name not in JOB_OPTIONS:
                shown = str(name)[:40]
                raise BodyError(
                    400,
                    shown,
                    f"a training job takes `config`, `dataset` and the options "
                    f"{', '.join(JOB_OPTIONS)}; not {shown!r}",
                )
        return fields

    @staticmethod
    def _config(config: Any) -> dict[str, Any]:
        if config is None:
            raise BodyError(400, "config", "the training config is missing (`config`)")
        if isinstance(config, str | bytes):
            if len(config) > MAX_CONFIG_BYTES:
                raise BodyError(400, "config", f"the config is over {MAX_CONFIG_BYTES} bytes")
            try:
                return parse_config_text(config)
            except ConfigError as err:
                raise BodyError(400, "config", str(err)) from None
        if not isinstance(config, dict):
            raise BodyError(400, "config", "config must be a mapping of settings (or its text)")
        return config


class TrainingJobsHandler(JobsAPIHandler):
    """`POST api/v1/training-jobs` (`?dry_run=1`: where it would run, nothing queued)."""

    @property
    def max_body_bytes(self) -> int:  # type: ignore[override]
        if self.request.method != "POST":
            return 0
        return self.service.training_max_dataset_bytes + MAX_CONFIG_BYTES + FIELDS_ROOM_BYTES

    async def post(self) -> None:
        dry_run = self.get_query_argument("dry_run", "0").strip().lower() in TRUE_WORDS
        try:
            submission = TrainingSubmission.parse(
                self.request.headers.get("Content-Type", ""), self.body
            )
            checked = await self.checked(submission)
        except BodyError as err:
            self.send_bad_request(err.field, str(err), err.status)
            return
        except JobError as err:
            self.send_bad_request(err.field, str(err))
            return
        fields, request, config, offer, spot = checked
        if dry_run:
            self.send_json(await self.preview(request, config, offer, spot))
            return
        if offer is not None and not getattr(self.queue.backend, "runs_cloud_jobs", False):
            self.send_bad_request(
                "where",
                "this hub runs jobs on its own machines only; ask with dry_run=1 for what it "
                "would cost on a cloud offer",
            )
            return
        # queued as any job is (the same checks again, answered as POST api/v1/jobs is)
        entry = await self.queued(fields, request.script)
        if entry is None:
            return
        self.service.log.info("job %s is a training job (%s)", entry["id"], config.algorithm)
        self.set_header(
            "Location", url_path_join(self.service.service_prefix, "api/v1/jobs", entry["id"])
        )
        self.send_json(self.view(entry), 201)

    async def checked(
        self, submission: TrainingSubmission
    ) -> tuple[dict[str, Any], JobRequest, TrainingConfig, Offer | None, bool]:
        """The job's fields and its request, checked, its config, and the cloud offer it
        asks for (with spot or not); BodyError or JobError for the first thing wrong."""
        options = dict(submission.options)
        offer, spot = self.cloud_offer(options)
        await self.load_images()
        fields = {k: v for k, v in options.items() if k not in ("where", "pricing")}
        if offer is not None:
            wanted = fields.pop("gpus", None)
            fields.pop("gpu_model", None)
            # left out, or 0 (a client's default): the offer's own
            given = "" if wanted is None else str(wanted).strip()
            if given not in ("", "0", str(offer.gpu_count)):
                raise JobError("gpus", f"That cloud offer has {offer.gpu_count} GPU(s).")
        gpus_asked = offer is not None or str(fields.get("gpus") or "0").strip() not in ("", "0")
        image = training_image(fields.get("image"), self._images, gpus_asked)
        if image is None and fields.get("image") in (None, ""):
            raise JobError(
                "image",
                "No image in this hub's catalog can run training jobs (none says "
                "`training: true` in its metadata); ask an admin to add one.",
            )
        if image is not None:
            fields["image"] = image["name"]
        request = self.checked_submission(fields, "pass\n")
        if not can_train(request.image):
            raise JobError(
                "image",
                f"The image {request.image.get('name')!r} cannot run training jobs: its catalog "
                "entry does not say `training: true` (it needs thinkube-hub[train]).",
            )
        service = self.service
        name = dataset_file_name(submission.dataset) if submission.dataset is not None else None
        placement = Placement(
            gpu=request.gpus > 0 or offer is not None,
            models_path=service.training_models_path,
            datasets_path=service.training_datasets_path,
            models=dict(service.training_models),
            uploaded=name,
        )
        try:
            config = check_config(submission.config, placement)
        except ConfigError as err:
            raise JobError(f"config.{err.field}" if err.field else "config", str(err)) from None
        if submission.dataset is not None:
            if len(submission.dataset) > service.training_max_dataset_bytes:
                raise BodyError(
                    413,
                    "dataset",
                    f"the dataset is over {service.training_max_dataset_bytes} bytes: put it "
                    "on the shared datasets volume and name it in dataset.path",
                )
            try:
                check_records(read_records(submission.dataset), config.dataset)
            except ConfigError as err:  # the file sent is at fault, not the config
                raise JobError("dataset", str(err)) from None
        metadata = fields.get("metadata")
        if isinstance(metadata, Mapping) and "kind" in metadata:
            raise JobError("metadata", "metadata `kind` is the service's: it marks training jobs.")
        script = training_script(config, submission.dataset, name)
        limit = service.job_limits.max_script_bytes
        if len(script.encode("utf-8")) > limit:
            raise JobError(
                "dataset",
                f"The dataset is too large to send with the job ({len(script) // 1024} KiB "
                f"compressed, at most {limit // 1024} KiB): put it on the shared datasets "
                "volume and name it in dataset.path.",
            )
        if offer is not None:  # for a backend that runs jobs on cloud offers
            fields.update(where=options["where"], pricing="spot" if spot else "on-demand")
        fields.update(
            name=config.name,
            project=config.project,
            script_name=SCRIPT_NAME,
            metadata=training_metadata(
                config,
                submission.dataset is not None,
                metadata if isinstance(metadata, Mapping) else None,
            ),
        )
        return fields, self.checked_submission(fields, script), config, offer, spot

    def cloud_offer(self, options: Mapping[str, Any]) -> tuple[Offer | None, bool]:
        where = options.get("where")
        pricing = options.get("pricing")
        if pricing not in (None, "") and pricing not in PRICINGS:
            raise JobError("pricing", f"pricing must be {' or '.join(PRICINGS)}.")
        spot = pricing == "spot"
        if where in (None, ""):
            return None, spot
        if not isinstance(where, str) or not where.startswith(CLOUD_PREFIX):
            raise JobError(
                "where", "where names a cloud offer as the spawn form does: cloud:<offer key>."
            )
        cloud = self.service.cloud
        if cloud is None or not cloud.offers.configured:
            raise JobError("where", "Cloud GPUs are not configured on this hub.")
        key = where[len(CLOUD_PREFIX) :]
        offer = next((o for o in cloud.offers.offers if o.key == key), None)
        if offer is None:
            raise JobError("where", f"No cloud offer {key[:80]!r} is known now.")
        if offer.price(spot) is None:
            raise JobError(
                "pricing", f"That offer has no {'spot' if spot else 'on-demand'} price now."
            )
        return offer, spot

    async def preview(
        self, request: JobRequest, config: TrainingConfig, offer: Offer | None, spot: bool
    ) -> dict[str, Any]:
        now = time.time()
        factor = self.queue.settings.deadline_factor
        answer: dict[str, Any] = {
            "dry_run": True,
            "queued": False,
            "image": request.image.get("name"),
            "gpus": offer.gpu_count if offer is not None else request.gpus,
            "expected_time": request.expected_s,
            "metadata": dict(request.metadata),
            "config": config.to_dict(),
        }
        if offer is not None:
            cost = cost_ceiling(offer, spot, request.expected_s, factor)
            answer["where"] = {
                "placement": "cloud",
                "summary": f"RunPod: {offer.label()}",
                "node": None,
                "position": None,
                "expected_node": None,
                "eta": None,
            }
            answer["cost"] = cost
            return answer
        where = await self.queue.preview(self.user_name, request)
        answer["where"] = {
            "placement": "queue",
            "summary": where_summary(where),
            "node": where.get("node"),
            "position": where.get("position"),
            "expected_node": where.get("expected_node"),
            "eta": _estimate(where.get("eta"), now),
        }
        answer["cost"] = None
        return answer


def training_routes(prefix: str) -> list[tuple]:
    return [(url_path_join(prefix, "api/v1/training-jobs"), TrainingJobsHandler)]
