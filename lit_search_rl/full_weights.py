"""The policy's weights as full tensors under their Hugging Face names, one parameter at a time.

Weight sync pushes these into the rollout engine after optimizer steps. A lazy stream keeps the
peak extra memory at one gathered parameter instead of a whole second copy of the model, which
is what makes colocated rollouts fit on one GPU. Three layouts of the policy are handled:

- a plain module: its parameters as they are;
- FSDP: a DTensor parameter (FSDP2, ``fully_shard``) is gathered with ``full_tensor()`` one at a
  time; an FSDP1 module is summoned one wrapped unit at a time (``recurse=False``), so only that
  unit's full parameters exist at once;
- LoRA through peft: the adapters are merged into the base weights, the base weights are streamed
  under the plain model's names, and the adapters are unmerged again afterwards.

Every rank must call these together when the policy is sharded: gathering is a collective.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

Weight = tuple[str, torch.Tensor]
"""A parameter's Hugging Face name and its full (unsharded) value."""

_FSDP_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """The Hugging Face name of a parameter, without the wrappers FSDP, activation checkpointing,
    ``torch.compile`` and peft put around it."""
    for prefix in _FSDP_PREFIXES:
        name = name.replace(prefix, "")
    if name.startswith("base_model.model."):  # peft's PeftModel wrapper around the causal LM
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".")


def _is_lora(name: str) -> bool:
    return ".lora_" in name or "modules_to_save" in name


@contextlib.contextmanager
def merged_lora(model: nn.Module) -> Iterator[None]:
    """LoRA adapters merged into the base weights for the duration of the block (no-op without peft)."""
    if not hasattr(model, "merge_adapter"):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def _fsdp1_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch without distributed support
        return []
    return [(prefix, m) for prefix, m in model.named_modules() if isinstance(m, FullyShardedDataParallel)]


def iter_full_weights(model: nn.Module) -> Iterator[Weight]:
    """Every weight of ``model``, full and detached, under its Hugging Face name, lazily.

    A tied parameter (``lm_head.weight`` sharing the embeddings) appears under each of its names,
    gathered once: an engine that reloads layer by layer must see every layer's weights. LoRA
    adapter tensors are left out because they are merged into the base weights.
    """
    units = _fsdp1_units(model)
    if units:
        if hasattr(model, "merge_adapter") or any(_is_lora(name) for name, _ in model.named_parameters()):
            raise ValueError("weight sync of a LoRA policy under FSDP1 is not supported; use FSDP2 or full weights")
        yield from _iter_fsdp1(units)
        return
    with merged_lora(model):
        named = list(model.named_parameters(remove_duplicate=False))
        names_of = Counter(id(param) for _, param in named)
        tied: dict[int, torch.Tensor] = {}  # gathered tied parameters, kept for their other names
        for name, param in named:
            if _is_lora(name):
                continue
            value = tied.get(id(param))
            if value is None:
                value = param.detach()
                if hasattr(value, "full_tensor"):  # a DTensor: an FSDP2 shard, gathered on every rank
                    value = value.full_tensor()
                if names_of[id(param)] > 1:
                    tied[id(param)] = value
            yield clean_name(name), value


def _iter_fsdp1(units: list[tuple[str, nn.Module]]) -> Iterator[Weight]:
    from torch.distributed.fsdp import FullyShardedDataParallel

    for prefix, unit in units:
        # recurse=False: only this unit's own parameters are gathered, never its nested units'.
        with FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False):
            for name, param in unit.named_parameters():
                if name.count("_fsdp_wrapped_module.") > 1:  # owned (and gathered) by a nested unit
                    continue
                yield clean_name(f"{prefix}.{name}" if prefix else name), param.detach().clone()
