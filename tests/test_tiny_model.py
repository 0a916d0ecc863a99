"""The tiny offline model: Hugging Face loading, chat template, protocol tags, a real forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_search_rl.rollout.tags import TAGS


def test_loads_with_auto_classes_and_runs(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3" and model.config.head_dim == 64
    assert model.config.vocab_size == len(tokenizer) <= 600
    ids = tokenizer("Who directed it?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 5
    summary = json.loads((model_dir / "tiny_model.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())


def test_chat_template_and_special_tokens(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tags_are_single_tokens_and_text_round_trips(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for tag in TAGS:
        assert len(tokenizer(tag, add_special_tokens=False).input_ids) == 1, tag
    text = "<think> Zebu Krai was born in 1931. </think>\n<search> Zebu Krai birthplace | Tovar 1999 </search>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text  # byte-level BPE: any text, even unseen words, round-trips
