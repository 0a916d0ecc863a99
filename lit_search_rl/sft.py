"""The SFT warm-start module: next-token loss on the expert's own tokens only.

Retrieved passages and the prompt are masked (``loss_mask`` 0), exactly as in GRPO, so the
warm start teaches the protocol and the search behaviour, not the documents. At the end of
fit the policy is exported in the Hugging Face layout for the GRPO stage to load.

Run it: ``lit-search-rl fit --config configs/synthetic/sft.yaml``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule

from lit_search_rl.fsdp import shard_policy
from lit_search_rl.policy import ExportsPolicy, load_policy, load_tokenizer
from lit_search_rl.schedules import warmup_cosine


def next_token_predictions(
    policy: torch.nn.Module, batch: dict[str, torch.Tensor], masks: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Logits only where some mask trains the next token: (logits (B, K, V), targets (B, K), masks (B, K)).

    The output projection costs as much as the rest of a tiny model; the prompt and, in copy drills, the first
    half of every row are never trained on, so computing logits there is wasted. ``logits_to_keep`` takes the
    positions (shared by the batch), and the model applies its own head and any logit scaling to them.

    Args:
        policy: A Hugging Face causal LM.
        batch: ``input_ids`` and ``attention_mask``, (B, T).
        masks: (B, T) masks, 1 on the tokens to predict.
    """
    needed = torch.stack([m[:, 1:] for m in masks]).flatten(0, 1).any(0)  # (T-1,): some row trains token t+1
    positions = needed.nonzero().squeeze(1)  # (K,)
    logits = policy(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=positions
    ).logits  # (B, K, V)
    return logits, batch["input_ids"][:, positions + 1], [m[:, positions + 1] for m in masks]


def token_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the masked targets.

    Args:
        logits: (B, K, V) predictions of ``targets``.
        targets: (B, K) token ids.
        mask: (B, K) 1 where the target is trained on.
    """
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")  # (B*K,)
    weights = mask.flatten().to(nll.dtype)
    return (nll * weights).sum() / weights.sum().clamp(min=1)


def copy_counts(logits: torch.Tensor, targets: torch.Tensor, copy_mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Greedy (teacher-forced) predictions of the tokens the expert copies: (right, copied tokens, trajectories
    with every copy right, trajectories with a copy).

    Args:
        logits: (B, K, V) predictions of ``targets``.
        targets: (B, K) token ids.
        copy_mask: (B, K) 1 on the targets that spell a name or year copied from the question or a passage.
    """
    mask = copy_mask.bool()
    right = (logits.argmax(-1) == targets) & mask  # (B, K)
    has_copy = mask.any(-1)  # (B,)
    all_right = (right.sum(-1) == mask.sum(-1)) & has_copy  # (B,)
    return int(right.sum()), int(mask.sum()), int(all_right.sum()), int(has_copy.sum())


class SFTModule(ExportsPolicy, LightningModule):
    """Supervised warm start of a search agent on expert trajectories.

    Args:
        model: Folder or Hub name of the causal LM to train (``AutoModelForCausalLM``).
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Steps of linear warm-up before the cosine decay.
        min_lr_ratio: Learning rate at the end of the cosine decay, as a fraction of the peak.
        dtype: Parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
        information_loss_weight: Weight of a language-modelling loss on the retrieved passages, relative to the
            expert's own tokens (0: the policy loss only). Reading the passages this way teaches copying faster;
            use it only on worlds that are not tested (``data.fresh_worlds``), or the model learns the test facts.
        export_dir: Where to save the policy (Hugging Face layout) at each checkpoint and the end of fit; unset to skip.
    """

    def __init__(
        self,
        model: str,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        information_loss_weight: float = 0.0,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if information_loss_weight < 0:
            raise ValueError(f"model.information_loss_weight must not be negative (got {information_loss_weight})")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model)  # light, and the data module shares it before the model exists
        self.policy = None
        self._copies = [0, 0, 0, 0]  # validation: right, copied, all-right trajectories, trajectories

    def configure_model(self) -> None:
        # Built here rather than in __init__ so that sharded strategies can wrap it; idempotent.
        if self.policy is None:
            self.policy = load_policy(self.hparams.model, self.hparams.dtype)
            if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 over the data-parallel ranks
                shard_policy(self.policy, self.device_mesh["data_parallel"])
            self.policy.train()  # from_pretrained returns eval mode

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        weight = self.hparams.information_loss_weight
        masks = [batch["loss_mask"], batch["information_mask"]] if weight > 0 else [batch["loss_mask"]]
        logits, targets, masks = next_token_predictions(self.policy, batch, masks)
        loss = token_nll(logits, targets, masks[0])
        self.log("train/loss", loss, prog_bar=True)
        if weight > 0:
            information = token_nll(logits, targets, masks[1])
            self.log("train/information_loss", information)
            loss = loss + weight * information
        self.log("train/trained_tokens", batch["loss_mask"].sum().float(), reduce_fx="sum")
        return loss

    def on_validation_epoch_start(self) -> None:
        self._copies = [0, 0, 0, 0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        copies = "copy_mask" in batch  # a subset of the loss mask: no further logits
        masks = [batch["loss_mask"], batch["copy_mask"]] if copies else [batch["loss_mask"]]
        logits, targets, masks = next_token_predictions(self.policy, batch, masks)
        loss = token_nll(logits, targets, masks[0])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        if copies:
            counts = copy_counts(logits, targets, masks[1])
            self._copies = [a + b for a, b in zip(self._copies, counts, strict=True)]

    def on_validation_epoch_end(self) -> None:
        right, copied, exact, trajectories = self._copies
        if copied:
            # Exact ratios over the whole held-out set (a mean of per-batch ratios would weight batches).
            self.log("val/copy_accuracy", right / copied, prog_bar=True, sync_dist=True)
            self.log("val/copy_exact", exact / max(1, trajectories), sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        total, warmup = max(1, self.trainer.estimated_stepping_batches), self.hparams.warmup_steps
        schedule = warmup_cosine(warmup, max(1, total - warmup), self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
