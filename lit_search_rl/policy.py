"""Loading and saving the policy: any causal LM folder or Hub name that transformers can read."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_search_rl.distributed import rank_and_world
from lit_search_rl.io import atomic_output_dir

if TYPE_CHECKING:
    from lit_search_rl.checkpointing import AtomicCheckpointIO


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (EOS when the model has none) for batched training."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """The causal LM in ``dtype`` (``float32``, ``bfloat16`` or ``float16``)."""
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))


EXPORT_INFO = "export_info.json"
"""File in the export folder naming the training step it holds and the checkpoint it belongs to."""


def with_lora(model: PreTrainedModel, rank: int):
    """``model`` wrapped by peft with LoRA adapters of ``rank`` on every linear layer (alpha 2 x rank)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("model.lora_rank > 0 needs the peft package: pip install 'lit-search-rl[lora]'") from e
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, config)


def build_policy(
    name_or_path: str,
    dtype: str = "float32",
    lora_rank: int = 0,
    gradient_checkpointing: bool = False,
    reference: bool = False,
    mesh=None,
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The policy to train (in train mode), and a frozen copy of its initial weights when ``reference``.

    LoRA adapters of ``lora_rank`` (0: none) go on the policy only; with a device ``mesh`` both are
    sharded with FSDP2 over it.
    """
    from lit_search_rl.fsdp import shard_policy

    policy = load_policy(name_or_path, dtype)
    frozen = copy.deepcopy(policy).eval().requires_grad_(False) if reference else None
    if lora_rank > 0:
        policy = with_lora(policy, lora_rank)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if mesh is not None:
        if frozen is not None:
            shard_policy(frozen, mesh)
        shard_policy(policy, mesh)
    return policy.train(), frozen


def export_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    state: dict | None = None,
    info: dict | None = None,
) -> None:
    """Save model and tokenizer to ``out`` in the Hugging Face layout, replacing it whole.

    A LoRA model is merged into a copy first, so the export loads anywhere and the model being
    trained keeps its adapters. ``state`` gives the full weights of a sharded model; ``info``
    (e.g. ``global_step`` and ``checkpoint``) is written to ``export_info.json`` beside them.
    """
    if state is None and hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    with atomic_output_dir(out, overwrite=True, flag="export_dir") as tmp:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        if info is not None:
            (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


class ExportsPolicy:
    """Mixin for modules with ``policy``, ``tokenizer`` and an ``export_dir`` hyperparameter.

    Saves the policy in the Hugging Face layout with every Lightning checkpoint and at the end
    of fit, so transformers and vLLM load it directly. With the ``AtomicCheckpointIO`` (what
    ``lit-search-rl fit`` uses) the export is written once the checkpoint file is complete, so it
    is never ahead of the checkpoint; ``export_info.json`` in it names the step and the checkpoint.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from lit_search_rl.checkpointing import deferred_io

        self.export(after=deferred_io(self._trainer))

    def on_train_end(self) -> None:
        self.export()

    def export(self, after: AtomicCheckpointIO | None = None) -> None:
        """Save the policy to ``export_dir`` (from rank zero); does nothing when it is unset.

        Every rank must call it: a sharded policy is gathered first, one parameter at a time.
        With ``after`` the files are written once that CheckpointIO has put the checkpoint being
        saved in place, and ``export_info.json`` records its path; otherwise they are written now.
        """
        if not self.hparams.export_dir or self.policy is None:
            return
        from lit_search_rl.fsdp import is_sharded
        from lit_search_rl.full_weights import iter_full_weights

        state = None
        if is_sharded(self.policy):
            state = {name: value.cpu() for name, value in iter_full_weights(self.policy)}  # a collective
        if rank_and_world()[0] != 0:
            return
        step = self._trainer.global_step if self._trainer is not None else None

        def write(checkpoint: Path | None) -> None:
            info = {"global_step": step, "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve())}
            export_policy(self.policy, self.tokenizer, self.hparams.export_dir, state, info)

        if after is None:
            write(None)
        else:
            after.defer(write)
