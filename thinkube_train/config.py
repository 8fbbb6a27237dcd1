"""A fine-tuning job's config, checked. Pure: no torch or transformers here, so that the
service checks a config with the same rules the trainer applies, before anything is queued.

A config (YAML or JSON text, or a dict)::

    base_model: Qwen/Qwen2.5-0.5B        # a Hugging Face id, an absolute path on the shared
                                         # models volume, or a name from the admin's catalog
    algorithm: lora                      # lora | qlora | dora | ia3
    rank: 16                             # LoRA/DoRA rank (> 0)
    alpha: 32                            # LoRA/DoRA scaling (> 0)
    dropout: 0.05                        # LoRA/DoRA dropout, in [0, 1)
    target_modules: all-linear           # a list of module names, or all-linear;
                                         # left out: PEFT's usual ones for the architecture
    quantization: none                   # none | int8 | int4 (qlora: int4); needs a CUDA GPU
    dataset:
      path: /datasets/support/chats.jsonl  # JSON Lines, or a JSON array of objects
      prompt_field: question             # with response_field; or text_field (default: text)
      response_field: answer
    epochs: 1                            # or max_steps
    learning_rate: 0.0002
    batch_size: 4
    max_seq_length: 512
    project: support-bot
    name: first-try

:func:`check_config` turns one into a :class:`TrainingConfig` or raises :class:`ConfigError`
naming the field at fault (a dotted path: ``dataset.text_field``). What the place it will run
can do (a GPU or not, the shared volumes, the admin's catalog of models) is a
:class:`Placement`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

__all__ = [
    "ALGORITHMS",
    "QUANTIZATIONS",
    "ConfigError",
    "DatasetConfig",
    "Placement",
    "TrainingConfig",
    "check_config",
    "check_records",
    "parse_config_text",
    "read_records",
]

ALGORITHMS = ("lora", "qlora", "dora", "ia3")
QUANTIZATIONS = ("none", "int8", "int4")
ALL_LINEAR = "all-linear"

# A Hugging Face repository id: `org/name` (or a bare `name`, as older models have).
_HF_ID_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}", re.ASCII)
_MODULE_RE = re.compile(r"[A-Za-z0-9_.\-*]{1,128}", re.ASCII)
_FIELD_NAME_RE = re.compile(r"[^\x00-\x1f]{1,128}")
MAX_TARGET_MODULES = 64

_KEYS = (
    "base_model",
    "algorithm",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "feedforward_modules",
    "quantization",
    "dataset",
    "epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "gradient_accumulation",
    "max_seq_length",
    "warmup_steps",
    "weight_decay",
    "logging_steps",
    "seed",
    "project",
    "name",
)
_DATASET_KEYS = ("path", "text_field", "prompt_field", "response_field", "separator")


class ConfigError(ValueError):
    """A config the trainer would not run; `field` is the dotted path of what is wrong."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Placement:
    """What the place a job runs can do, and what the hub allows.

    `gpu`: it has a CUDA GPU (int8/int4 need one). `models_path` and `datasets_path`: the
    shared volumes an absolute `base_model` or `dataset.path` must lie in (None: anywhere,
    as in the trainer itself, which reads what the service already checked). `models`: the
    admin's catalog of allowed models, name -> Hugging Face id or path (empty: any model).
    `uploaded`: the file name of a dataset sent with the submission (then `dataset.path` is
    left out). `exists`: whether a path is there (a file or a folder).
    """

    gpu: bool
    models_path: str | None = None
    datasets_path: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    uploaded: str | None = None
    exists: Callable[[str], bool] = os.path.exists


@dataclass(frozen=True)
class DatasetConfig:
    path: str  # absolute, or (in the trainer) relative to the config file's folder
    text_field: str | None = "text"
    prompt_field: str | None = None
    response_field: str | None = None
    separator: str = "\n"  # between a prompt and its response


@dataclass(frozen=True)
class TrainingConfig:
    base_model: str
    algorithm: str
    dataset: DatasetConfig
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str | None = None  # None: PEFT's default for the model
    feedforward_modules: tuple[str, ...] | None = None  # IA3 only
    quantization: str = "none"
    epochs: float = 1.0
    max_steps: int | None = None  # when set, it is the run's length and epochs is ignored
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_seq_length: int = 512
    warmup_steps: int = 0
    weight_decay: float = 0.0
    logging_steps: int = 10
    seed: int = 42
    project: str = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """As JSON takes it: what the trainer reads back with check_config."""
        data = asdict(self)
        for key in ("target_modules", "feedforward_modules"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        if data["max_steps"] is None:
            del data["max_steps"]
        return data


def parse_config_text(text: str | bytes) -> dict[str, Any]:
    """A config's text (JSON or YAML) as a dict; ConfigError (field None) if it is neither."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(None, "The config must be UTF-8 text.") from None
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(None, f"The config is neither JSON nor valid YAML{at}.") from None
    if not isinstance(document, dict):
        raise ConfigError(None, "The config must be a mapping of settings (YAML or JSON).")
    return document


def _type_name(value: Any) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


def _integer(raw: Mapping[str, Any], key: str, default: int | None, low: int, high: int):
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"{key} must be a whole number, not {_type_name(value)}.")
    if not low <= value <= high:
        raise ConfigError(key, f"{key} must be from {low} to {high}; it is {value}.")
    return value


def _number(
    raw: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"{key} must be a number, not {_type_name(value)}.")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(key, f"{key} must be in {left}{low:g}, {high:g}{right}; it is {value:g}.")
    return value


def _choice(raw: Mapping[str, Any], key: str, default: str, options: Sequence[str]) -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(
            key, f"{key} must be one of {', '.join(options)}, not {_type_name(value)}."
        )
    text = value.strip().lower()
    if text not in options:
        raise ConfigError(key, f"{key} must be one of {', '.join(options)}; got {value[:40]!r}.")
    return text


def _label(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(key, f"{key} must be text, not {_type_name(value)}.")
    value = value.strip()
    if value and not _NAME_RE.fullmatch(value):
        raise ConfigError(
            key,
            f"{key} may hold letters, digits, spaces, '.', '_' and '-', at most 63 characters, "
            "starting with a letter or digit.",
        )
    return value


def _modules(raw: Mapping[str, Any], key: str, allow_all: bool) -> tuple[str, ...] | str | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        if allow_all and value.strip().lower() == ALL_LINEAR:
            return ALL_LINEAR
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not value or len(value) > MAX_TARGET_MODULES:
        raise ConfigError(
            key,
            f"{key} must be a list of 1 to {MAX_TARGET_MODULES} module names"
            + (f" or {ALL_LINEAR!r}." if allow_all else "."),
        )
    for name in value:
        if not isinstance(name, str) or not _MODULE_RE.fullmatch(name):
            raise ConfigError(
                key, f"{key} holds module names like q_proj (letters, digits, '_', '.', '-')."
            )
    return tuple(dict.fromkeys(value))


def _base_model(raw: Mapping[str, Any], placement: Placement) -> str:
    value = raw.get("base_model")
    if value in (None, ""):
        raise ConfigError("base_model", "base_model is needed: a Hugging Face id like org/name.")
    if not isinstance(value, str):
        raise ConfigError("base_model", f"base_model must be text, not {_type_name(value)}.")
    value = value.strip()
    from_catalog = False
    if placement.models:
        if value in placement.models:
            value, from_catalog = placement.models[value], True
        elif value in placement.models.values():
            from_catalog = True
        else:
            raise ConfigError(
                "base_model",
                f"{value[:100]!r} is not in this hub's catalog of models; it has: "
                f"{', '.join(sorted(placement.models))}.",
            )
    if value.startswith("/"):
        if not from_catalog:  # the admin's own entries may lie anywhere
            _inside("base_model", value, placement.models_path, "models")
        if not placement.exists(value):
            raise ConfigError("base_model", f"There is no model at {value[:200]}.")
        return value
    if ".." in value or not _HF_ID_RE.fullmatch(value):
        raise ConfigError(
            "base_model",
            f"{value[:100]!r} is neither a Hugging Face id (org/name) nor an absolute path.",
        )
    return value


def _inside(key: str, path: str, root: str | None, what: str) -> None:
    """Refuse an absolute path outside the shared volume `root` (None: anywhere)."""
    if root is None:
        return
    normal = os.path.normpath(path)
    top = os.path.normpath(root)
    if normal != path.rstrip("/") or not (normal + "/").startswith(top.rstrip("/") + "/"):
        raise ConfigError(key, f"{key} must be a path in the shared {what} volume, {top}.")


def _dataset(raw: Mapping[str, Any], placement: Placement) -> DatasetConfig:
    value = raw.get("dataset")
    if isinstance(value, str):
        value = {"path": value}
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError("dataset", "dataset must be a path or a mapping (path, text_field, ...).")
    unknown = [k for k in value if k not in _DATASET_KEYS]
    if unknown:
        raise ConfigError(
            f"dataset.{str(unknown[0])[:40]}",
            f"dataset has no setting {str(unknown[0])[:40]!r}; it takes "
            f"{', '.join(_DATASET_KEYS)}.",
        )
    path = value.get("path")
    if path is not None and not isinstance(path, str):
        raise ConfigError("dataset.path", f"dataset.path must be text, not {_type_name(path)}.")
    if placement.uploaded is not None:
        if path not in (None, "", placement.uploaded):
            raise ConfigError("dataset.path", "Give dataset.path or send a dataset file, not both.")
        path = placement.uploaded
    elif path in (None, ""):
        raise ConfigError(
            "dataset", "A dataset is needed: dataset.path on the shared volume, or a file sent."
        )
    elif os.path.isabs(path):
        _inside("dataset.path", path, placement.datasets_path, "datasets")
        if not placement.exists(path):
            raise ConfigError("dataset.path", f"There is no dataset at {path[:200]}.")
    elif placement.datasets_path is not None:
        raise ConfigError(
            "dataset.path",
            f"dataset.path must be an absolute path in the shared datasets volume, "
            f"{placement.datasets_path}.",
        )
    fields = {}
    for key in ("text_field", "prompt_field", "response_field"):
        name = value.get(key)
        if name is not None and (not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name)):
            raise ConfigError(f"dataset.{key}", f"dataset.{key} must be a field's name.")
        fields[key] = name
    separator = value.get("separator", "\n")
    if not isinstance(separator, str) or len(separator) > 64:
        raise ConfigError("dataset.separator", "dataset.separator must be text (64 at most).")
    prompt, response, text = fields["prompt_field"], fields["response_field"], fields["text_field"]
    if (prompt is None) != (response is None):
        missing = "response_field" if response is None else "prompt_field"
        raise ConfigError(
            f"dataset.{missing}", "dataset.prompt_field and dataset.response_field go together."
        )
    if prompt is not None and text is not None:
        raise ConfigError(
            "dataset.text_field",
            "Give dataset.text_field, or dataset.prompt_field and response_field, not both.",
        )
    if prompt is None and text is None:
        text = "text"
    return DatasetConfig(
        path=path,
        text_field=text,
        prompt_field=prompt,
        response_field=response,
        separator=separator,
    )


def check_config(raw: Mapping[str, Any] | str | bytes, placement: Placement) -> TrainingConfig:
    """The config, checked against what `placement` can do; ConfigError names the first
    field at fault."""
    if isinstance(raw, str | bytes):
        raw = parse_config_text(raw)
    if not isinstance(raw, Mapping):
        raise ConfigError(None, "The config must be a mapping of settings (YAML or JSON).")
    for key in raw:
        if key not in _KEYS:
            shown = str(key)[:40]
            raise ConfigError(
                shown, f"Unknown setting {shown!r}; a training config takes {', '.join(_KEYS)}."
            )
    if "algorithm" not in raw:
        raise ConfigError("algorithm", f"algorithm is needed: one of {', '.join(ALGORITHMS)}.")
    algorithm = _choice(raw, "algorithm", "lora", ALGORITHMS)
    rank = _integer(raw, "rank", 16, 1, 4096)
    alpha = _number(raw, "alpha", 32.0, 0, 1e6, low_open=True)
    dropout = _number(raw, "dropout", 0.05, 0, 1, high_open=True)
    quantization = _choice(raw, "quantization", "none", QUANTIZATIONS)
    if algorithm == "qlora":
        if raw.get("quantization") is not None and quantization != "int4":
            raise ConfigError(
                "quantization", "qlora is LoRA on a model loaded in 4 bits: quantization int4."
            )
        quantization = "int4"
    if quantization != "none" and not placement.gpu:
        named = "quantization" if raw.get("quantization") is not None else "algorithm"
        what = "qlora (a 4-bit model)" if named == "algorithm" else f"{quantization} quantization"
        raise ConfigError(
            named,
            f"{what} needs a CUDA GPU (bitsandbytes), and this job has none: ask for a GPU "
            "or use quantization none.",
        )
    target_modules = _modules(raw, "target_modules", allow_all=True)
    feedforward = _modules(raw, "feedforward_modules", allow_all=False)
    if feedforward is not None:
        if algorithm != "ia3":
            raise ConfigError("feedforward_modules", "feedforward_modules is for ia3 only.")
        if not isinstance(target_modules, tuple) or not set(feedforward) <= set(target_modules):
            raise ConfigError(
                "feedforward_modules",
                "feedforward_modules must be among target_modules (listed by name).",
            )
    max_steps = _integer(raw, "max_steps", None, 1, 10_000_000)
    config = TrainingConfig(
        base_model=_base_model(raw, placement),
        algorithm=algorithm,
        dataset=_dataset(raw, placement),
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=target_modules,
        feedforward_modules=feedforward,
        quantization=quantization,
        epochs=_number(raw, "epochs", 1.0, 0, 1000, low_open=True),
        max_steps=max_steps,
        learning_rate=_number(raw, "learning_rate", 2e-4, 0, 1, low_open=True),
        batch_size=_integer(raw, "batch_size", 4, 1, 4096),
        gradient_accumulation=_integer(raw, "gradient_accumulation", 1, 1, 1024),
        max_seq_length=_integer(raw, "max_seq_length", 512, 8, 131072),
        warmup_steps=_integer(raw, "warmup_steps", 0, 0, 1_000_000),
        weight_decay=_number(raw, "weight_decay", 0.0, 0, 1),
        logging_steps=_integer(raw, "logging_steps", 10, 1, 1_000_000),
        seed=_integer(raw, "seed", 42, 0, 2**32 - 1),
        project=_label(raw, "project"),
        name=_label(raw, "name"),
    )
    return config


# --- datasets ---------------------------------------------------------------------------------


def read_records(data: bytes, where: str = "dataset") -> list[dict[str, Any]]:
    """The examples of a dataset file: a JSON array of objects, or JSON Lines (one object a
    line, blank lines skipped). ConfigError (field `where`) names the first bad line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(where, "The dataset must be UTF-8 text (JSON or JSON Lines).") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except ValueError as err:
            raise ConfigError(
                where, f"The dataset is not valid JSON (line {_line_of(err)})."
            ) from None
        if not all(isinstance(r, dict) for r in records):
            raise ConfigError(where, "A JSON dataset must be an array of objects.")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(where, f"Line {number} of the dataset is not JSON.") from None
        if not isinstance(record, dict):
            raise ConfigError(where, f"Line {number} of the dataset is not a JSON object.")
        records.append(record)
    return records


def _line_of(err: ValueError) -> int:
    return getattr(err, "lineno", 0) or 0


def check_records(records: Sequence[Mapping[str, Any]], dataset: DatasetConfig) -> None:
    """Every example holds the fields the config names, as text; ConfigError if not."""
    if not records:
        raise ConfigError("dataset", "The dataset has no examples.")
    if dataset.text_field is not None:
        wanted = [("dataset.text_field", dataset.text_field)]
    else:
        wanted = [
            ("dataset.prompt_field", dataset.prompt_field),
            ("dataset.response_field", dataset.response_field),
        ]
    for number, record in enumerate(records, 1):
        for key, name in wanted:
            if not isinstance(record.get(name), str):
                problem = "has no" if name not in record else "has a non-text"
                raise ConfigError(key, f"Example {number} of the dataset {problem} field {name!r}.")
