"""The trainer: `python -m thinkube_train CONFIG.json` fine-tunes a model with PEFT.

It reads the config (thinkube_train.config: the service checked it already; it is checked
again here against this machine), loads the model and its tokenizer with transformers (in 8
or 4 bits through bitsandbytes when the config asks for quantization), applies LoRA, DoRA or
IA3, turns the dataset into token sequences (a text field, or a prompt and its response with
the loss on the response only), and trains with AdamW in a small loop of its own, printing
one line per logging step::

    step 5/20 loss 2.3141 lr 1.8e-04 samples/s 41.2 eta 3s

Into the artifacts folder (`$THINKUBE_ARTIFACTS_DIR`, else `./artifacts`) it writes the
adapter (`adapter_model.safetensors`, `adapter_config.json`), the tokenizer's files,
`training_config.json` (the config as run) and, last, `metrics.json` (steps, final loss,
duration, algorithm). A failure ends it with one plain line on stderr and a non-zero exit
status (2 for a config it refuses, 1 otherwise); `THINKUBE_TRAIN_TRACEBACK=1` adds the
traceback.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import (
    ConfigError,
    DatasetConfig,
    Placement,
    TrainingConfig,
    check_config,
    check_records,
    parse_config_text,
    read_records,
)

__all__ = ["TrainingError", "artifacts_dir", "main", "progress_line", "train"]

ARTIFACTS_ENV = "THINKUBE_ARTIFACTS_DIR"
IGNORED = -100  # the label torch's cross-entropy leaves out of the loss
MAX_GRAD_NORM = 1.0


class TrainingError(RuntimeError):
    """Training could not go on; the message says why in one plain line."""


def artifacts_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the job's results go: `$THINKUBE_ARTIFACTS_DIR`, else ./artifacts."""
    return Path(environ.get(ARTIFACTS_ENV) or "artifacts").absolute()


def duration_text(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(
    step: int, total: int, loss: float, lr: float, samples_per_s: float, eta_s: float
) -> str:
    """`step 5/20 loss 2.3141 lr 1.8e-04 samples/s 41.2 eta 3s`."""
    return (
        f"step {step}/{total} loss {loss:.4f} lr {lr:.1e} "
        f"samples/s {samples_per_s:.1f} eta {duration_text(eta_s)}"
    )


def lr_factor(index: int, total: int, warmup: int) -> float:
    """The learning rate's factor at optimizer step `index` (0-based): up linearly over
    `warmup` steps, then down linearly towards 0 at `total`."""
    if index < warmup:
        return (index + 1) / warmup
    return max(0.0, (total - index) / max(1, total - warmup))


def load_config(path: str | os.PathLike, has_gpu: bool) -> TrainingConfig:
    """The config file, checked for this machine; a relative dataset path is taken from the
    config file's folder (where the job put a dataset sent with it)."""
    config_path = Path(path)
    try:
        text = config_path.read_bytes()
    except OSError as err:
        raise TrainingError(f"the config {config_path} cannot be read: {err.strerror}") from None
    raw = parse_config_text(text)
    dataset = raw.get("dataset")
    folder = config_path.absolute().parent
    if isinstance(dataset, Mapping) and isinstance(dataset.get("path"), str):
        if not os.path.isabs(dataset["path"]):
            raw = {**raw, "dataset": {**dataset, "path": str(folder / dataset["path"])}}
    return check_config(raw, Placement(gpu=has_gpu))


def load_records(dataset: DatasetConfig) -> list[dict[str, Any]]:
    try:
        data = Path(dataset.path).read_bytes()
    except OSError as err:
        raise TrainingError(f"the dataset {dataset.path} cannot be read: {err.strerror}") from None
    records = read_records(data)
    check_records(records, dataset)
    return records


def encode_examples(
    records: Sequence[Mapping[str, Any]],
    dataset: DatasetConfig,
    tokenizer: Any,
    max_length: int,
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example, cut at `max_length` tokens. With prompt and
    response fields the prompt's tokens are left out of the loss; an example whose
    response is cut away entirely is dropped."""
    eos = tokenizer.eos_token_id
    encoded = []
    for record in records:
        if dataset.text_field is not None:
            ids = list(tokenizer(record[dataset.text_field])["input_ids"])
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            labels = list(ids)
        else:
            prompt = record[dataset.prompt_field] + dataset.separator
            prompt_ids = list(tokenizer(prompt)["input_ids"])
            answer = list(
                tokenizer(record[dataset.response_field], add_special_tokens=False)["input_ids"]
            )
            if eos is not None:
                answer.append(eos)
            ids = prompt_ids + answer
            labels = [IGNORED] * len(prompt_ids) + answer
        ids, labels = ids[:max_length], labels[:max_length]
        if len(ids) >= 2 and any(label != IGNORED for label in labels[1:]):
            encoded.append((ids, labels))
    return encoded


def batches(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Example indices in batches, shuffled anew each epoch, for ever."""
    order = list(range(count))
    shuffler = random.Random(seed)
    while True:
        shuffler.shuffle(order)
        for start in range(0, count, batch_size):
            yield order[start : start + batch_size]


def _imports():
    try:
        import peft
        import torch
        import transformers
    except ImportError as err:
        raise TrainingError(
            f"this environment cannot train: {err.name or err} is not installed "
            "(pip install 'thinkube-hub[train]')"
        ) from None
    transformers.utils.logging.set_verbosity_error()
    # Notices meant for the libraries' developers, not for whoever reads the job's log.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\b")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\b")
    transformers.utils.logging.disable_progress_bar()
    return torch, transformers, peft


def _load_model(config: TrainingConfig, torch, transformers, device: str):
    """The base model (quantized when asked) and its tokenizer."""
    cuda = device == "cuda"
    dtype = torch.float32
    if cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    kwargs: dict[str, Any] = {}
    if config.quantization != "none":
        try:
            import bitsandbytes  # noqa: F401 (only checked for: transformers loads it)
        except ImportError:
            raise TrainingError(
                f"{config.quantization} quantization needs bitsandbytes, which this "
                "environment lacks (pip install 'thinkube-hub[train]')"
            ) from None
        compute = dtype if dtype != torch.float32 else torch.float16
        if config.quantization == "int4":
            quantization = transformers.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
        else:
            quantization = transformers.BitsAndBytesConfig(load_in_8bit=True)
        kwargs.update(quantization_config=quantization, device_map={"": 0})
        dtype = compute
    # transformers 4.56 renamed torch_dtype to dtype
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(config.base_model)
        model = transformers.AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"the model {config.base_model} could not be loaded: {first}") from None
    if config.quantization == "none":
        model.to(device)
    return model, tokenizer


def _peft_config(config: TrainingConfig, peft):
    targets = config.target_modules
    if isinstance(targets, tuple):
        targets = list(targets)
    if config.algorithm == "ia3":
        return peft.IA3Config(
            task_type="CAUSAL_LM",
            target_modules=targets,
            feedforward_modules=list(config.feedforward_modules)
            if config.feedforward_modules
            else None,
        )
    return peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        use_dora=config.algorithm == "dora",
    )


def _collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int, torch, device):
    longest = max(len(ids) for ids, _ in examples)
    ids = [e[0] + [pad_id] * (longest - len(e[0])) for e in examples]
    labels = [e[1] + [IGNORED] * (longest - len(e[1])) for e in examples]
    mask = [[1] * len(e[0]) + [0] * (longest - len(e[0])) for e in examples]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def train(
    config: TrainingConfig,
    out_dir: Path,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Any]:
    """Run the training `config` describes, writing its artifacts to `out_dir`; the
    metrics (also written as metrics.json)."""
    began = time.monotonic()
    torch, transformers, peft = _imports()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if config.quantization != "none" and device != "cuda":
        raise TrainingError(f"{config.quantization} quantization needs a CUDA GPU; none is here")
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    records = load_records(config.dataset)
    model, tokenizer = _load_model(config, torch, transformers, device)
    examples = encode_examples(records, config.dataset, tokenizer, config.max_seq_length)
    if not examples:
        raise TrainingError(
            "no example is left to learn from (each needs 2 tokens or more, and with "
            "prompt/response a response within max_seq_length)"
        )
    if config.quantization != "none":
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    try:
        model = peft.get_peft_model(model, _peft_config(config, peft))
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "refused"
        raise TrainingError(
            f"PEFT cannot apply {config.algorithm} to this model: {first}"
        ) from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_parameters = sum(p.numel() for p in model.parameters())

    micro_per_epoch = math.ceil(len(examples) / config.batch_size)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.gradient_accumulation))
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    log(
        f"thinkube-train: {config.algorithm} on {config.base_model} ({device}), "
        f"{len(examples)} examples, {total} steps of {config.batch_size}x"
        f"{config.gradient_accumulation}, {trainable:,} of {total_parameters:,} parameters "
        f"trained; artifacts in {out_dir}"
    )

    model.train()
    order = batches(len(examples), config.batch_size, config.seed)
    losses: list[dict[str, float]] = []  # the mean loss of each logging step
    window_loss, window_steps, window_samples = 0.0, 0, 0
    window_began = time.monotonic()
    train_began = window_began
    last_loss = float("nan")
    for index in range(total):
        lr = config.learning_rate * lr_factor(index, total, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for _ in range(config.gradient_accumulation):
            chosen = next(order)
            batch = _collate([examples[i] for i in chosen], pad_id, torch, device)
            loss = model(**batch).loss / config.gradient_accumulation
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at step {index + 1}: try a smaller "
                    "learning_rate"
                )
            loss.backward()
            step_loss += loss.item()
            window_samples += len(chosen)
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step = index + 1
        last_loss = step_loss
        window_loss += step_loss
        window_steps += 1
        if step % config.logging_steps == 0 or step == total:
            now = time.monotonic()
            rate = window_samples / max(now - window_began, 1e-9)
            eta = (now - train_began) / step * (total - step)
            mean = window_loss / window_steps
            losses.append({"step": step, "loss": round(mean, 6)})
            log(progress_line(step, total, mean, lr, rate, eta))
            window_loss, window_steps, window_samples = 0.0, 0, 0
            window_began = now

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metrics = {
        "algorithm": config.algorithm,
        "base_model": config.base_model,
        "quantization": config.quantization,
        "device": device,
        "examples": len(examples),
        "steps": total,
        "final_loss": round(last_loss, 6),
        "duration_seconds": round(time.monotonic() - began, 3),
        "train_seconds": round(time.monotonic() - train_began, 3),
        "trainable_parameters": trainable,
        "total_parameters": total_parameters,
        "losses": losses,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(
        f"thinkube-train: done: {total} steps, final loss {last_loss:.4f}, "
        f"{duration_text(metrics['duration_seconds'])}; adapter in {out_dir}"
    )
    return metrics


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m thinkube_train CONFIG.json|CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        config = load_config(args[0], _has_gpu())
        train(config, artifacts_dir())
    except ConfigError as err:
        where = f"{err.field}: " if err.field else ""
        print(f"thinkube-train: the config is refused: {where}{err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"thinkube-train: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thinkube-train: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a library's failure: one plain line, as every other ending
        if os.environ.get("THINKUBE_TRAIN_TRACEBACK") == "1":
            traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"thinkube-train: training failed: {type(err).__name__}: {first}", file=sys.stderr)
        return 1
    return 0
