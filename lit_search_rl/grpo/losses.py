"""GRPO losses as pure tensor functions: group advantages, the clipped policy loss and KL estimators.

No Lightning, no model: tensors in, tensors out, so they can be checked by hand. Shapes:
N trajectories, T response tokens. Each function follows veRL's ``core_algos`` where it says
so; the few places that differ say why.

Advantage estimators and policy losses are registries, chosen by name in the module's config
(``model.advantage_scale``, ``model.policy_loss``): a new one is one function under
``@register_advantage("name")`` or ``@register_policy_loss("name")``.

Micro-batching: the aggregation normalisers (``num_tokens``, ``num_seqs``, ``horizon``) can be
given for the whole batch, so that the losses of micro-batches add up to the loss of the
batch and gradient accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import torch

Scale = str  # a registered advantage estimator: group, batch, none, or your own
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")

F = TypeVar("F", bound=Callable)
AdvantageEstimator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
"""(centred rewards (N,), rewards (N,), group index of each (N,), eps) -> (N,) advantages."""
ADVANTAGES: dict[str, AdvantageEstimator] = {}


def _registrar(table: dict[str, F]) -> Callable[[str], Callable[[F], F]]:
    """A decorator factory that files functions in ``table`` under a name."""

    def register(name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            table[name] = fn
            return fn

        return add

    return register


register_advantage = _registrar(ADVANTAGES)
"""``@register_advantage("name")``: an advantage estimator chosen by ``model.advantage_scale``."""


@register_advantage("group")
def _group_std(centred: torch.Tensor, rewards: torch.Tensor, group: torch.Tensor, eps: float) -> torch.Tensor:
    # GRPO (veRL's default): divided by the group's unbiased std + eps.
    counts = torch.bincount(group).to(rewards.dtype)
    squares = torch.zeros_like(counts).index_add_(0, group, centred**2)
    std = torch.sqrt(squares / (counts - 1).clamp(min=1))  # (G,) unbiased
    return centred / (std[group] + eps)


@register_advantage("batch")
def _batch_std(centred: torch.Tensor, rewards: torch.Tensor, group: torch.Tensor, eps: float) -> torch.Tensor:
    std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    return centred / (std + eps)


@register_advantage("none")
def _centred_only(centred: torch.Tensor, rewards: torch.Tensor, group: torch.Tensor, eps: float) -> torch.Tensor:
    return centred  # Dr. GRPO: the group mean subtracted, no scaling


@register_advantage("group_positive")
def _group_std_positive(centred: torch.Tensor, rewards: torch.Tensor, group: torch.Tensor, eps: float) -> torch.Tensor:
    # GRPO's advantages with the negative ones set to 0: only better-than-average rollouts are reinforced.
    return _group_std(centred, rewards, group, eps).clamp(min=0.0)


class PolicyLoss(Protocol):
    """A policy loss: (N, T) logprobs, old logprobs, advantages and mask, settings as keywords, to
    (scalar loss, detached statistics); see ``policy_loss`` for the arguments."""

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, **settings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...  # fmt: skip


POLICY_LOSSES: dict[str, PolicyLoss] = {}
register_policy_loss = _registrar(POLICY_LOSSES)
"""``@register_policy_loss("name")``: a policy loss chosen by ``model.policy_loss``."""


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, scale: Scale = "group", eps: float = 1e-6
) -> torch.Tensor:
    """Outcome advantages normalised within each group of rollouts of one question.

    Args:
        rewards: (N,) reward of each trajectory.
        group_ids: (N,) integer id of the question each trajectory answers.
        scale: a registered estimator: ``group`` divides by the group's unbiased std + eps (GRPO,
            veRL's default); ``batch`` by the unbiased std of all rewards in the batch + eps;
            ``none`` only subtracts the group mean (Dr. GRPO).
        eps: added to the std.

    Returns:
        (N,) advantages. A group of one gets 0: it has no baseline to compare with (veRL gives
        it the raw reward instead). A zero-variance group gets exactly 0 in every mode.
    """
    rewards = rewards.float()
    if scale not in ADVANTAGES:
        raise ValueError(f"scale must be one of {', '.join(ADVANTAGES)} (got {scale!r})")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, rewards)
    centred = rewards - (sums / counts)[inverse]  # (N,)
    advantages = ADVANTAGES[scale](centred, rewards, inverse, eps)
    return torch.where(counts[inverse] > 1, advantages, torch.zeros_like(advantages))


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    agg: Aggregation = "token-mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: int | None = None,
    horizon: int | None = None,
) -> torch.Tensor:
    """Reduce a (N, T) per-token loss to a scalar, with the meanings of veRL's ``agg_loss`` (0.9).

    ``token-mean``: sum over all masked tokens / number of masked tokens.
    ``seq-mean-token-mean``: mean over sequences of each sequence's token mean.
    ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
    ``seq-mean-token-sum-norm``: mean over sequences of each sequence's token sum, divided by
    ``horizon`` (Dr. GRPO: 1/G, then a constant length). veRL's default horizon is the padded
    width T, which changes with the batch, so pass a fixed ``horizon``.

    The seq-mean modes count only sequences with at least one trainable token: a fully masked
    row (a data-parallel filler row, a response cut to nothing) adds nothing and is not counted.

    ``num_tokens`` and ``num_seqs`` replace the counts of this tensor by those of the whole
    batch when ``loss`` is one micro-batch of it (``num_seqs``: the non-empty sequences). A
    batch with nothing trainable gives 0.
    """
    mask = mask.to(loss.dtype)
    token_sums = (loss * mask).sum(-1)  # (N,)
    if agg == "token-mean":
        denominator = mask.sum() if num_tokens is None else num_tokens
        return token_sums.sum() / torch.as_tensor(denominator, dtype=loss.dtype).clamp(min=1)
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {', '.join(AGGREGATIONS)} (got {agg!r})")
    token_counts = mask.sum(-1)  # (N,)
    # Fully masked rows have a token sum of 0 already; leaving them out of the count is what matters.
    sequences = (token_counts > 0).sum() if num_seqs is None else num_seqs
    sequences = torch.as_tensor(sequences, dtype=loss.dtype).clamp(min=1)
    if agg == "seq-mean-token-mean":
        return (token_sums / token_counts.clamp(min=1)).sum() / sequences
    seq_mean = token_sums.sum() / sequences
    if agg == "seq-mean-token-sum":
        return seq_mean
    return seq_mean / (horizon if horizon is not None else loss.shape[-1])


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when nothing is masked in)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


@register_policy_loss("ppo_clip")
def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
    agg: Aggregation = "token-mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: int | None = None,
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO clipped surrogate with asymmetric clipping and an optional dual clip.

    Args:
        logprobs: (N, T) log-probabilities of the taken tokens under the policy being trained.
        old_logprobs: (N, T) the same under the policy that sampled them.
        advantages: (N,) per sequence or (N, T) per token.
        mask: (N, T) 1 on the model's own tokens.
        clip_low: the ratio is clipped below at 1 - clip_low.
        clip_high: and above at 1 + clip_high (DAPO's clip-higher uses clip_high > clip_low).
        clip_c: dual clip (veRL's ``clip_ratio_c``, > 1): for negative advantages the loss is at
            most ``-advantage * clip_c``; None turns it off.
        agg: how token losses become a scalar (see ``aggregate``).
        num_tokens, num_seqs, horizon: whole-batch normalisers for micro-batches (see ``aggregate``).

    Returns:
        The loss and statistics: ``clip_fraction`` (share of tokens where clipping changed the
        loss), ``clip_fraction_lower`` (share where the dual clip did), ``approx_kl`` (mean of
        old - new logprob, veRL's ``ppo_kl``).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)  # (N, T)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)  # as veRL, against overflow
    ratio = torch.exp(log_ratio)  # (N, T)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)  # (N, T)
    stats = {"clip_fraction": masked_mean((clipped > unclipped).float(), mask)}
    if clip_c is not None:
        bound = -advantages * clip_c
        dual = torch.minimum(losses, bound)
        stats["clip_fraction_lower"] = masked_mean(((losses > bound) & (advantages < 0)).float(), mask)
        losses = torch.where(advantages < 0, dual, losses)
    else:
        stats["clip_fraction_lower"] = torch.zeros((), device=logprobs.device)
    stats["approx_kl"] = masked_mean(-log_ratio, mask).detach()
    stats = {k: v.detach() for k, v in stats.items()}
    loss = aggregate(losses, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, horizon=horizon)
    return loss, stats


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Elementwise KL(policy || reference) estimators of the taken tokens.

    ``k1``: logp - ref_logp. ``k2``: (logp - ref_logp)^2 / 2. ``k3``: the low-variance estimator
    exp(ref - logp) - (ref - logp) - 1, with veRL's clamps (log-ratio to [-20, 20], result to
    [-10, 10]); it is never negative.
    """
    delta = logprobs - ref_logprobs
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta**2
    if kind == "k3":
        log_ratio = (-delta).clamp(-20.0, 20.0)
        return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"kind must be one of {', '.join(KL_KINDS)} (got {kind!r})")


def token_entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """(N, T) entropy of each next-token distribution from its (N, T, V) log-probabilities."""
    return -(logprobs.exp() * logprobs).sum(-1)


def zero_variance_advantages(
    advantages: torch.Tensor, zero_variance: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor, alpha: float
) -> torch.Tensor:
    """(N, T) token advantages with RL-ZVP's for the trajectories of zero-variance groups (arXiv 2509.21880, eq. 5).

    A trajectory of a group whose rollouts were all rewarded (``zero_variance`` +1) gets ``alpha * H_t`` on
    each of its tokens, one of a group with none rewarded (-1) gets ``-alpha * (max_k H_k - H_t)``, the max
    taken over that trajectory's own tokens; any other trajectory (0) keeps its GRPO advantage on every
    token. ``H`` is the policy's entropy at each token, used as a number: no gradient flows through it (the
    paper detaches it too). Tokens outside ``mask`` (prompt, retrieved information, padding) get 0. The
    paper's rule, with one reading made explicit: a multi-turn trajectory's "response" is the model's own
    tokens only, so the max runs over them and not over the information blocks between turns.

    Args:
        advantages: (N,) GRPO advantages (0 for the zero-variance groups).
        zero_variance: (N,) +1, -1 or 0 as above.
        entropy: (N, T) token entropies (detached here in any case).
        mask: (N, T) 1 on the model's own tokens.
        alpha: the scale of the zero-variance advantages.
    """
    entropy = entropy.detach()
    own = mask.bool()
    peak = entropy.masked_fill(~own, float("-inf")).amax(-1, keepdim=True).clamp(min=0.0)  # (N, 1)
    sign = zero_variance[:, None]
    shaped = torch.where(sign > 0, alpha * entropy, -alpha * (peak - entropy))
    token = torch.where(sign != 0, shaped, advantages[:, None].expand_as(entropy))
    return token * own
