"""Fully sharded data parallelism (FSDP2) for the policy, under Lightning's ``ModelParallelStrategy``.

``trainer.strategy: ModelParallelStrategy`` gives the module a device mesh; ``GRPOModule`` then
shards every decoder layer and the model root over its data-parallel dimension with
``fully_shard``, so each GPU holds 1/N of the weights, gradients and AdamW state. Parameters
become DTensors: the weight sync and the export gather them one at a time with ``full_tensor()``.

Generation is the one place where sharding does not fit: every forward of a sharded model is a
collective, but ranks generate different numbers of tokens and turns. So with the transformers
engine a sharded policy generates with an unsharded *rollout copy* that receives the full weights
before each rollout (the same sync the vLLM engine gets); with vLLM the engine is that copy.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from lit_search_rl.full_weights import iter_full_weights


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is a DTensor shard (FSDP2)."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def layer_classes(model: PreTrainedModel) -> set[str]:
    """The model's repeated blocks (transformers' ``_no_split_modules``, e.g. ``Qwen3DecoderLayer``)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules) to shard by")
    return names


def shard_policy(model: PreTrainedModel, mesh) -> PreTrainedModel:
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, head), over ``mesh``."""
    from torch.distributed.fsdp import fully_shard

    classes = layer_classes(model)
    for module in model.modules():
        if type(module).__name__ in classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@torch.no_grad()
def copy_full_weights(source: nn.Module, target: nn.Module) -> None:
    """Load ``source``'s full weights (gathered from shards; a collective) into the plain ``target``."""
    params = dict(target.named_parameters())  # a tied parameter once, under its first name
    for name, value in iter_full_weights(source):
        if name in params:
            params[name].copy_(value)
