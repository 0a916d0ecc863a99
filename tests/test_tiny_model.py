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


def test_the_llama_layout_loads_and_the_torch_engine_runs_it(world_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from lit_search_rl.models.tiny import create_tiny_model
    from lit_search_rl.rollout.engine import SamplingConfig
    from lit_search_rl.rollout.hf_engine import HFEngine
    from lit_search_rl.rollout.torch_engine import TorchEngine, unsupported_reason
    from tests.conftest import SMALL_MODEL

    create_tiny_model(world_dir, tmp_path / "llama", replace(SMALL_MODEL, architecture="llama"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    assert model.config.model_type == "llama" and not hasattr(model.model.layers[0].self_attn, "q_norm")
    assert unsupported_reason(model) is None
    prompts = [tokenizer("<think> Zebu Krai", add_special_tokens=False).input_ids, [5, 6, 7, 8, 9]]
    greedy = SamplingConfig(temperature=0.0)
    ours = TorchEngine(model, tokenizer, greedy).generate(prompts, [12, 12], [])
    theirs = HFEngine(model, tokenizer, greedy).generate(prompts, [12, 12], [])
    assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
