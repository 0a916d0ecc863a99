"""The update maths of GRPO as functions of (policy, batch, settings): no Lightning, no trainer.

``make_update_batch`` turns the chosen groups into padded tensors with group-normalised
advantages; ``accumulate_gradients`` runs the micro-batched backward of the whole batch's loss.
Micro-batch losses are normalised by whole-batch counts, so their gradients add up to the
gradient of the batch loss whatever the micro-batch size; with several ranks each takes every
world-th trajectory and scales its loss back up, so the averaged gradient is the batch's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lit_search_rl.data.pool import classify_group
from lit_search_rl.distributed import balanced_rows, rank_and_world
from lit_search_rl.grpo.config import LossConfig
from lit_search_rl.grpo.losses import (
    POLICY_LOSSES,
    aggregate,
    group_advantages,
    kl_penalty,
    token_entropy,
    zero_variance_advantages,
)
from lit_search_rl.rollout.agent import Trajectory
from lit_search_rl.rollout.encoding import pad_batch


@dataclass
class UpdateBatch:
    """Tensors of the trajectories that are trained on. N trajectories, L = prompt + response width."""

    input_ids: torch.Tensor  # (N, L) right-padded
    attention_mask: torch.Tensor  # (N, L)
    loss_mask: torch.Tensor  # (N, L) 1 on the model's own response tokens
    advantages: torch.Tensor  # (N,)
    # (N, L-1) logprob of token t+1 at position t before the update; None: on-policy, the ratio is 1.
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None  # (N, L-1)
    # (N, L-1) the rollout engine's logprob of token t+1 at position t on the model's own tokens (0 elsewhere);
    # None when the engine gave none. Compared with pi_old's as train/rollout_probs_diff.
    rollout_logprobs: torch.Tensor | None = None
    # Loss normalisers of the whole effective batch, over all ranks (None: this batch's own):
    # trainable tokens, and sequences with at least one trainable token.
    num_tokens: float | None = None
    num_seqs: int | None = None
    # Data-parallel gradients are averaged over ranks; each rank's loss is scaled back up so the
    # averaged gradient is the gradient of the whole batch's loss.
    loss_scale: float = 1.0
    # (N,) +1 / -1 for the trajectories of an all-rewarded / unrewarded group trained with RL-ZVP's token
    # advantages, 0 for the rest; None: no zero-variance group in the batch.
    zero_variance: torch.Tensor | None = None


def make_update_batch(
    groups: Sequence[Sequence[Trajectory]],
    rewards: Sequence[Sequence[float]],
    chosen: Sequence[int],
    pad_id: int,
    advantage_scale: str = "group",
    device: torch.device | str = "cpu",
    zero_variance: bool = False,
) -> UpdateBatch:
    """Padded tensors and group-normalised advantages of this rank's share of the chosen groups.

    Advantages and loss normalisers come from the whole effective batch. With several ranks
    each takes every world-th trajectory and pads with fully masked rows to the same count.
    With ``zero_variance`` (RL-ZVP) every group of ``groups`` whose rewards are all equal joins the
    batch too, marked for its token advantages (``zero_variance_advantages``).
    """
    sign = {}  # RL-ZVP: +1 for a group whose rollouts were all rewarded, -1 for none, 0 for a signal group
    if zero_variance:
        sign = {i: {"too_easy": 1.0, "too_hard": -1.0}.get(classify_group(r), 0.0) for i, r in enumerate(rewards)}
        chosen = [*chosen, *(i for i, s in sign.items() if s and i not in chosen)]
    trajectories = [t for i in chosen for t in groups[i]]
    flat_rewards = torch.tensor([r for i in chosen for r in rewards[i]], dtype=torch.float32)
    group_ids = torch.tensor([i for i in chosen for _ in groups[i]])
    advantages = group_advantages(flat_rewards, group_ids, scale=advantage_scale)
    examples = [{"input_ids": t.prompt_ids + t.response_ids, "loss_mask": [0] * len(t.prompt_ids) + t.loss_mask}
                for t in trajectories]  # fmt: skip
    num_tokens = float(sum(sum(e["loss_mask"][1:]) for e in examples))
    # The seq-mean modes count only sequences with a trainable token (veRL's agg_loss), so the
    # fully masked filler rows below need no special case.
    num_seqs = sum(any(e["loss_mask"][1:]) for e in examples)
    rank, world = rank_and_world()
    rows, padding = balanced_rows(len(examples), rank, world)
    # Rows of similar length side by side: each micro-batch is cut to its own longest row (``token_logprobs``),
    # so sorted rows waste little of it on padding. Order is free: every per-row tensor follows ``rows``.
    rows.sort(key=lambda i: len(examples[i]["input_ids"]))
    filler = {"input_ids": examples[0]["input_ids"], "loss_mask": [0] * len(examples[0]["input_ids"])}
    local = [examples[i] for i in rows] + [filler] * padding
    local_advantages = torch.cat([advantages[rows], torch.zeros(padding)])
    signs = None
    if zero_variance:
        flat = torch.tensor([sign[i] for i in chosen for _ in groups[i]])
        signs = torch.cat([flat[rows], torch.zeros(padding)]).to(device)
    padded = {k: v.to(device) for k, v in pad_batch(local, pad_id).items()}
    return UpdateBatch(
        padded["input_ids"], padded["attention_mask"], padded["loss_mask"], local_advantages.to(device),
        rollout_logprobs=_rollout_logprobs([trajectories[i] for i in rows], padding, padded["input_ids"].shape[1],
                                           device),
        num_tokens=num_tokens, num_seqs=num_seqs, loss_scale=float(world), zero_variance=signs,
    )  # fmt: skip


def _rollout_logprobs(trajectories: Sequence[Trajectory], padding: int, width: int, device) -> torch.Tensor | None:
    """(n + padding, width - 1) engine logprobs placed where the update predicts each response token; or None."""
    if any(t.logprobs is None for t in trajectories):
        return None
    values = torch.zeros((len(trajectories) + padding, width - 1))
    for row, t in enumerate(trajectories):
        start = len(t.prompt_ids) - 1  # position t predicts token t + 1: the first response token at prompt - 1
        values[row, start : start + len(t.logprobs)] = torch.tensor(t.logprobs)
    return values.to(device)


def token_logprobs(model, batch: UpdateBatch, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n, L-1) logprob of each next token, and (n, L-1) entropy of each next-token distribution.

    Both are computed only at positions where some row of ``rows`` predicts one of its own tokens
    (``loss_mask``), and are 0 elsewhere, where nothing reads them: the output projection and the softmax over
    the vocabulary cost as much as the rest of a small model, and the prompt and the retrieved passages are
    most of every row. ``logits_to_keep`` takes those positions, so the model applies its own head (and any
    logit scaling) to them. The entropy is only computed for the training pass; the frozen old / reference
    logprobs, computed without gradients, return None for it.
    """
    attention = batch.attention_mask[rows]
    # Rows are right-padded to the batch's longest; the forward runs to this micro-batch's longest only (causal
    # attention: a position never sees the padding after it, so nothing it computes changes).
    width = int(attention.any(0).nonzero().max()) + 1
    input_ids, mask = batch.input_ids[rows, :width], batch.loss_mask[rows, 1:width]
    positions = mask.any(0).nonzero().squeeze(1)  # (K,)
    logits = model(input_ids=input_ids, attention_mask=attention[:, :width], logits_to_keep=positions).logits
    logp = logits.float().log_softmax(-1)  # (n, K, V)
    chosen = torch.zeros((input_ids.shape[0], batch.input_ids.shape[1] - 1), dtype=logp.dtype, device=logp.device)
    chosen[:, positions] = logp.gather(-1, input_ids[:, positions + 1, None])[..., 0]
    if not torch.is_grad_enabled():
        return chosen, None
    entropy = torch.zeros_like(chosen)
    entropy[:, positions] = token_entropy(logp).detach()
    return chosen, entropy


LogprobFn = Callable[[torch.nn.Module, UpdateBatch, slice], tuple[torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def frozen_logprobs(model, batch: UpdateBatch, micro_batch_size: int, logprobs_of: LogprobFn = token_logprobs):
    """(N, L-1) logprobs of the whole batch under ``model``, micro-batch by micro-batch, without gradients."""
    n = batch.input_ids.shape[0]
    return torch.cat(
        [logprobs_of(model, batch, slice(i, i + micro_batch_size))[0] for i in range(0, n, micro_batch_size)]
    )


def accumulate_gradients(
    policy,
    batch: UpdateBatch,
    loss_config: LossConfig,
    micro_batch_size: int,
    horizon: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    logprobs_of: LogprobFn = token_logprobs,
) -> tuple[bool, dict[str, float]]:
    """Micro-batched backward of the whole batch's loss; returns (loss finite, statistics summed over micro-batches).

    A non-finite micro-batch loss still goes through ``backward``: every rank must run the same
    backward passes, since each one all-reduces gradients; the non-finite gradient then makes the
    step skip. Statistics are this rank's; the caller sums them over ranks. ``horizon`` is the fixed length
    of ``seq-mean-token-sum-norm`` (the rollout's ``max_total_tokens``).
    """
    s = loss_config
    n = batch.input_ids.shape[0]
    mask = batch.loss_mask[:, 1:]  # (N, L-1): token t+1 is predicted at position t
    num_tokens = mask.sum().item() if batch.num_tokens is None else batch.num_tokens
    num_seqs = int((mask.sum(-1) > 0).sum()) if batch.num_seqs is None else batch.num_seqs
    norms = {"num_tokens": num_tokens, "num_seqs": num_seqs, "horizon": horizon}
    totals = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
    if batch.zero_variance is not None:  # the zero-variance groups' advantage mass, and everybody's
        totals["zero_variance_mass"] = totals["advantage_mass"] = 0.0
    if batch.rollout_logprobs is not None:
        totals["rollout_probs_diff"] = 0.0
    finite = True
    for i in range(0, n, micro_batch_size):
        rows = slice(i, min(n, i + micro_batch_size))
        logprobs, entropy = logprobs_of(policy, batch, rows)
        old = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs[rows]
        advantages = batch.advantages[rows]
        if batch.zero_variance is not None:
            advantages = zero_variance_advantages(advantages, batch.zero_variance[rows], entropy, mask[rows],
                                                  s.zero_variance_alpha)  # fmt: skip
            weight = advantages.abs()
            totals["zero_variance_mass"] += (weight * (batch.zero_variance[rows] != 0)[:, None]).sum().item()
            totals["advantage_mass"] += weight.sum().item()
        loss, stats = POLICY_LOSSES[s.policy_loss](logprobs, old, advantages, mask[rows],
                                                   clip_low=s.clip_low, clip_high=s.clip_high, clip_c=s.clip_c,
                                                   agg=s.loss_agg, **norms)  # fmt: skip
        if batch.ref_logprobs is not None:
            kl = aggregate(kl_penalty(logprobs, batch.ref_logprobs[rows], s.kl_estimator), mask[rows], s.loss_agg,
                           **norms)  # fmt: skip
            loss = loss + s.kl_coef * kl
            totals["kl"] += kl.item()
        finite = finite and bool(torch.isfinite(loss))
        backward(loss * batch.loss_scale)
        totals["loss"] += loss.item()
        totals["entropy"] += (entropy * mask[rows]).sum().item() / max(1, num_tokens)
        totals["clip_fraction"] += stats["clip_fraction"].item() * mask[rows].sum().item() / max(1, num_tokens)
        if batch.rollout_logprobs is not None:
            # How far the engine's token probabilities are from pi_old's (veRL's rollout_probs_diff): near 0
            # for an exact engine, larger for one that samples in another precision or from stale weights.
            gap = (old.exp() - batch.rollout_logprobs[rows].exp()).abs() * mask[rows]
            totals["rollout_probs_diff"] += gap.sum().item() / max(1, num_tokens)
    return finite, totals


def gradients_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (missing ones count as finite)."""
    return all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
