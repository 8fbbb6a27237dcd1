"""A tiny causal language model and a dataset for it, made in the test, without a download:
a Llama with hidden size 32, one layer and two heads, random weights, saved with a word-level
tokenizer trained on the dataset's own words."""

from __future__ import annotations

import json
import os
from pathlib import Path

EXAMPLES = 50
COLOURS = ("red", "green", "blue", "yellow", "purple")
ANIMALS = ("fox", "cat", "owl", "dog", "bee")


def dataset_records(count: int = EXAMPLES) -> list[dict[str, str]]:
    """Examples with a text field and prompt/response fields: a pattern a model can learn."""
    records = []
    for index in range(count):
        colour, animal = COLOURS[index % len(COLOURS)], ANIMALS[index % len(ANIMALS)]
        prompt = f"what colour is the {animal} ?"
        response = f"the {animal} is {colour} ."
        records.append({"text": f"{prompt} {response}", "prompt": prompt, "response": response})
    return records


def write_dataset(path: Path, count: int = EXAMPLES) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in dataset_records(count)))
    os.chmod(path, 0o644)
    return path


def build_model(folder: Path) -> Path:
    """Save the tiny model and its tokenizer in `folder`; readable by every account (as
    root, jobs run as people's own accounts)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [r["text"] for r in dataset_records()]
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<s>",
        eos_token="</s>",
    )
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    os.chmod(folder, 0o755)
    for item in folder.iterdir():
        os.chmod(item, 0o644)
    return folder
