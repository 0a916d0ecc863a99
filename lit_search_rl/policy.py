"""Loading and saving the policy: any causal LM folder or Hub name that transformers can read."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_search_rl.io import atomic_output_dir


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (EOS when the model has none) for batched training."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """The causal LM in ``dtype`` (``float32``, ``bfloat16`` or ``float16``)."""
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))


def export_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save model and tokenizer to ``out`` in the Hugging Face layout, replacing it whole."""
    with atomic_output_dir(out, overwrite=True, flag="export_dir") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
