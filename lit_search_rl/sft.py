"""The SFT warm-start module: next-token loss on the expert's own tokens only.

Retrieved passages and the prompt are masked (``loss_mask`` 0), exactly as in GRPO, so the
warm start teaches the protocol and the search behaviour, not the documents. At the end of
fit the policy is exported in the Hugging Face layout for the GRPO stage to load.

Run it: ``lit-search-rl fit --config configs/synthetic/sft.yaml``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule

from lit_search_rl.fsdp import shard_policy
from lit_search_rl.policy import ExportsPolicy, load_policy, load_tokenizer


def masked_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the masked tokens.

    Args:
        logits: (B, T, V) model outputs; position t predicts token t + 1.
        input_ids: (B, T) token ids.
        loss_mask: (B, T) 1 where the token is trained on.
    """
    targets = input_ids[:, 1:]  # (B, T-1)
    mask = loss_mask[:, 1:].to(logits.dtype)  # (B, T-1)
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")  # (B*(T-1),)
    return (nll.view_as(mask) * mask).sum() / mask.sum().clamp(min=1)


class SFTModule(ExportsPolicy, LightningModule):
    """Supervised warm start of a search agent on expert trajectories.

    Args:
        model: Folder or Hub name of the causal LM to train (``AutoModelForCausalLM``).
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Steps of linear warm-up before the cosine decay.
        min_lr_ratio: Learning rate at the end of the cosine decay, as a fraction of the peak.
        dtype: Parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
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
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model)  # light, and the data module shares it before the model exists
        self.policy = None

    def configure_model(self) -> None:
        # Built here rather than in __init__ so that sharded strategies can wrap it; idempotent.
        if self.policy is None:
            self.policy = load_policy(self.hparams.model, self.hparams.dtype)
            if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 over the data-parallel ranks
                shard_policy(self.policy, self.device_mesh["data_parallel"])
            self.policy.train()  # from_pretrained returns eval mode

    def _nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return masked_token_nll(logits, batch["input_ids"], batch["loss_mask"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._nll(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/trained_tokens", batch["loss_mask"].sum().float(), reduce_fx="sum")
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._nll(batch), prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup, floor = self.hparams.warmup_steps, self.hparams.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
