"""Loading and saving the policy: any causal LM folder or Hub name that transformers can read."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_search_rl.distributed import rank_and_world
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


def export_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, state: dict | None = None
) -> None:
    """Save model and tokenizer to ``out`` in the Hugging Face layout, replacing it whole.

    A LoRA model is merged into a copy first, so the export loads anywhere and the model being
    trained keeps its adapters. ``state`` gives the full weights of a sharded model.
    """
    if state is None and hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_output_dir(out, overwrite=True, flag="export_dir") as tmp:
        model.save_pretrained(tmp, state_dict=state)
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

    def export(self) -> None:
        """Save the policy to ``export_dir`` now (from rank zero); does nothing when it is unset.

        Every rank must call it: a sharded policy is gathered first, one parameter at a time.
        """
        if not self.hparams.export_dir or self.policy is None:
            return
        from lit_search_rl.fsdp import is_sharded
        from lit_search_rl.rollout.weights import iter_full_weights

        state = None
        if is_sharded(self.policy):
            state = {name: value.cpu() for name, value in iter_full_weights(self.policy)}  # a collective
        if rank_and_world()[0] == 0:
            export_policy(self.policy, self.tokenizer, self.hparams.export_dir, state)
