"""The GRPO module's settings that travel together: the loss and the optimizer, as documented dataclasses.

Each validates itself once, where it is defined, with errors that name the option as a config
file writes it (``model.loss.clip_low``). The same numeric checks run on the raw config before
any heavy import (``checks.check_grpo_settings``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from lit_search_rl.checks import check_loss_settings, check_one_of, check_optimizer_settings
from lit_search_rl.schedules import warmup_cosine


@dataclass
class LossConfig:
    """How rewards become advantages and advantages a loss (veRL's names where they exist)."""

    advantage_scale: str = "group"
    """A registered advantage estimator: ``group`` (GRPO: the group's std), ``batch`` (the batch's std),
    ``none`` (Dr. GRPO: the group mean subtracted only), ``group_positive`` (GRPO's, with the negative ones set to
    0), or one of your own (``grpo.losses.register_advantage``)."""
    policy_loss: str = "ppo_clip"
    """A registered policy loss: ``ppo_clip`` (the clipped surrogate, with clip-higher and dual clip), or one of
    your own (``grpo.losses.register_policy_loss``)."""
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    """How token losses become one number: over all tokens, or per sequence first (seq-mean-token-sum-norm
    divides by ``rollout.max_total_tokens``, Dr. GRPO's constant)."""
    clip_low: float = 0.2
    """Lower clip of the ratio, 1 - clip_low. The clip acts only with ``update_epochs`` above 1: one pass is
    on-policy, its ratio is 1 on every token, and no clip setting changes the update."""
    clip_high: float = 0.2
    """Upper clip of the ratio, 1 + clip_high (DAPO's clip-higher: above clip_low, 0.28 in the paper); like
    ``clip_low``, without effect at one update epoch."""
    clip_c: float | None = None
    """Dual-clip bound for negative advantages (above 1, veRL's clip_ratio_c), or unset."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the frozen reference policy; 0 loads no reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator: k1 (log-ratio), k2 (half its square) or k3 (the low-variance one, never negative)."""
    zero_variance_advantage: bool = False
    """RL-ZVP (arXiv 2509.21880): also train on every zero-variance group of the step, with token advantages from
    the policy's entropy (``alpha * H`` when all rollouts were rewarded, ``-alpha * (max H - H)`` when none was;
    ``grpo.losses.zero_variance_advantages``) instead of the zero GRPO gives them."""
    zero_variance_alpha: float = 0.1
    """RL-ZVP's scale of those advantages."""

    def validate(self, prefix: str = "model.loss.") -> None:
        from lit_search_rl.grpo.losses import ADVANTAGES, AGGREGATIONS, KL_KINDS, POLICY_LOSSES

        values = asdict(self)
        check_loss_settings(values, prefix)
        choices = {"advantage_scale": ADVANTAGES, "policy_loss": POLICY_LOSSES, "loss_agg": AGGREGATIONS,
                   "kl_estimator": KL_KINDS}  # fmt: skip
        for name, allowed in choices.items():
            check_one_of(values, name, allowed, prefix)


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up, a constant or cosine-decayed learning rate after it, and gradient clipping."""

    learning_rate: float = 1e-6
    """Peak AdamW learning rate."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up."""
    decay_steps: int = 0
    """Optimizer steps of cosine decay after the warm-up, from the peak down to ``min_lr_ratio`` of it (held there
    after); 0 keeps the peak rate (veRL's default). A step without signal groups takes no optimizer step."""
    min_lr_ratio: float = 0.0
    """Learning rate at the end of the decay, as a fraction of the peak, in [0, 1]."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    gradient_clip: float = 1.0
    """Maximum gradient norm; 0 turns clipping off."""
    adam_beta1: float = 0.9
    """AdamW's decay of the gradient's running mean, in [0, 1): nearer 1 averages a noisy gradient over more steps."""
    adam_beta2: float = 0.999
    """AdamW's decay of the squared gradient's running mean, in [0, 1)."""
    adam_eps: float = 1e-8
    """AdamW's term added to the root of the squared-gradient mean (above 0): a larger one shrinks the steps of
    parameters whose gradients are tiny instead of scaling them up to the learning rate."""

    def validate(self, prefix: str = "model.optimizer.") -> None:
        check_optimizer_settings(asdict(self), prefix)

    def build(self, params: Iterable[torch.nn.Parameter]) -> dict:
        """AdamW over ``params`` and its warm-up schedule, as Lightning's ``configure_optimizers`` returns them."""
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, betas=(self.adam_beta1, self.adam_beta2),
                                      eps=self.adam_eps, weight_decay=self.weight_decay)  # fmt: skip
        schedule = warmup_cosine(self.warmup_steps, self.decay_steps, self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
