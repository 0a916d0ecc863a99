"""``VLLMWeightSync``: after optimizer steps, push the policy's weights into the colocated vLLM engine.

Without it a vLLM engine keeps sampling from the weights it loaded at start, and training goes
on silently off-policy; so ``GRPOModule`` with ``engine: vllm`` refuses to fit without this
callback. Weights stream one parameter at a time, gathered from FSDP shards and merged from LoRA
adapters where needed (``lit_search_rl.full_weights``); the prefix cache is reset afterwards
because its keys and values came from the old weights.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from lit_search_rl.full_weights import iter_full_weights
from lit_search_rl.rollout.vllm_engine import VLLMEngine


def sync_weights(policy: nn.Module, engine: VLLMEngine) -> float:
    """Stream ``policy``'s full weights into ``engine``; returns the seconds it took.

    A collective when the policy is sharded: every rank must call it.
    """
    start = time.perf_counter()
    engine.load_weights(iter_full_weights(policy))
    engine.reset_prefix_cache()
    return time.perf_counter() - start


def require_weight_sync(trainer: L.Trainer) -> None:
    """Refuse to fit with a vLLM engine and no ``VLLMWeightSync`` among the callbacks: rollouts would keep
    sampling from the initial weights."""
    if not any(isinstance(c, VLLMWeightSync) for c in trainer.callbacks):
        raise ValueError("model.engine is vllm but trainer.callbacks has no VLLMWeightSync: rollouts would keep "
                         "sampling from the initial weights")  # fmt: skip


class VLLMWeightSync(Callback):
    """Keep the vLLM rollout engine on the current policy.

    Args:
        every_n_steps: Push after every this many optimizer steps (1: rollouts always come from the
            current policy; more: cheaper, but rollouts lag the policy by up to n-1 updates).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"VLLMWeightSync.every_n_steps must be at least 1 (got {every_n_steps})")
        self.every_n_steps = every_n_steps
        self.synced_step: int | None = None  # the global step whose weights the engine holds
        self.last_sync_time = 0.0

    def _engine(self, pl_module: L.LightningModule) -> VLLMEngine:
        engine = getattr(pl_module, "rollout_engine", None)
        if not isinstance(engine, VLLMEngine):
            raise ValueError("VLLMWeightSync needs model.engine: vllm (the module has no vLLM engine to sync)")
        return engine

    def sync(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Push the weights now and record the step they belong to."""
        self.last_sync_time = sync_weights(pl_module.policy, self._engine(pl_module))
        self.synced_step = trainer.global_step

    def _sync_if_stale(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.synced_step != trainer.global_step:
            self.sync(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The engine loaded the model folder; a resumed checkpoint or LoRA setup may differ from it.
        self.sync(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self.synced_step and step % self.every_n_steps == 0:
            self.sync(trainer, pl_module)
            pl_module.log_update({"train/weight_sync_time": self.last_sync_time})

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Evaluation always sees the current policy, whatever every_n_steps says.
        self._sync_if_stale(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync_if_stale(trainer, pl_module)
