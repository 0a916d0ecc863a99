"""Loading and saving the policy: any causal LM folder or Hub name that transformers can read."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
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
    """Save model and tokenizer to ``out`` in the Hugging Face layout, replacing it whole.

    A LoRA model is merged into a copy first, so the export loads anywhere and the model being
    trained keeps its adapters.
    """
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_output_dir(out, overwrite=True, flag="export_dir") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


class ExportsPolicy:
    """Mixin for modules with ``policy``, ``tokenizer`` and an ``export_dir`` hyperparameter.

    Saves the policy in the Hugging Face layout beside every Lightning checkpoint and at the
    end of fit, so transformers and vLLM load it directly.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.export()

    def on_train_end(self) -> None:
        self.export()

    @rank_zero_only
    def export(self) -> None:
        """Save the policy to ``export_dir`` now; does nothing when it is unset."""
        if self.hparams.export_dir and self.policy is not None:
            export_policy(self.policy, self.tokenizer, self.hparams.export_dir)
