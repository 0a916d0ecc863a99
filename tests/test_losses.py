"""GRPO loss functions on hand-computed examples, against a veRL-style reference, and their invariants."""

from __future__ import annotations

import math

import pytest
import torch

from lit_search_rl.grpo.losses import AGGREGATIONS, aggregate, group_advantages, kl_penalty, policy_loss


def verl_style_advantages(rewards: torch.Tensor, ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A loop-based reference written from veRL's GRPO outcome advantage (groups of one excepted)."""
    out = torch.zeros_like(rewards)
    for g in ids.unique():
        members = ids == g
        scores = rewards[members]
        if scores.numel() > 1:
            out[members] = (scores - scores.mean()) / (scores.std() + eps)
    return out


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    group = group_advantages(rewards, ids)
    assert torch.allclose(group, torch.tensor([0.5, -1.5, 0.5, 0.5, 0.0, 0.0, 0.0]), atol=1e-5)
    none = group_advantages(rewards, ids, scale="none")
    assert torch.allclose(none, torch.tensor([0.25, -0.75, 0.25, 0.25, 0.0, 0.0, 0.0]))
    batch_std = math.sqrt((4 * (3 / 7) ** 2 + 3 * (4 / 7) ** 2) / 6)
    batch = group_advantages(rewards, ids, scale="batch")
    assert torch.allclose(batch, none / (batch_std + 1e-6), atol=1e-6)
    # Only the better-than-average rollouts keep their (GRPO) advantage.
    positive = group_advantages(rewards, ids, scale="group_positive")
    assert torch.allclose(positive, torch.tensor([0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0]), atol=1e-5)
    # Zero-variance and single-trajectory groups are exactly zero in every mode.
    for scale in ("group", "batch", "none", "group_positive"):
        assert (group_advantages(rewards, ids, scale=scale)[4:] == 0).all()


def test_group_advantages_match_the_reference_on_random_groups() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (64,))
    rewards = torch.rand(64).round() * torch.rand(64)
    assert torch.allclose(group_advantages(rewards, ids), verl_style_advantages(rewards, ids), atol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, ids, scale="rank")


def test_aggregation_modes_by_hand() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4.0) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx((3 + 4) / 2 / 3)  # veRL: / T
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", horizon=4).item() == pytest.approx((3 + 4) / 2 / 4)
    with pytest.raises(ValueError, match="agg"):
        aggregate(loss, mask, "sum")


def test_aggregation_leaves_fully_masked_rows_out_of_the_sequence_count() -> None:
    # Row 2 has no trainable token (a data-parallel filler row, or a response cut to nothing):
    # as in veRL's agg_loss, it is not one of the sequences the seq-mean modes average over.
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4.0) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx((3 + 4) / 2 / 3)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", horizon=8).item() == pytest.approx((3 + 4) / 2 / 8)
    # Whole-batch counts given for a micro-batch are taken as they are (the caller counts non-empty rows).
    assert aggregate(loss, mask, "seq-mean-token-mean", num_seqs=5).item() == pytest.approx((1.5 + 4.0) / 5)
    assert aggregate(loss, mask, "seq-mean-token-sum", num_seqs=5).item() == pytest.approx((3 + 4) / 5)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", num_seqs=5, horizon=8).item() == pytest.approx(
        (3 + 4) / 5 / 8
    )
    # Nothing trainable at all: a loss of exactly 0 in every mode, never 0 / 0.
    for agg in AGGREGATIONS:
        assert aggregate(loss, torch.zeros_like(mask), agg).item() == 0.0


def test_seq_mean_token_sum_norm_does_not_grow_with_the_number_of_sequences() -> None:
    # Dr. GRPO's 1/G: repeating the same sequences leaves the loss as it is, whatever the batch size.
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    one = aggregate(loss, mask, "seq-mean-token-sum-norm", horizon=10)
    four = aggregate(loss.repeat(4, 1), mask.repeat(4, 1), "seq-mean-token-sum-norm", horizon=10)
    assert one.item() == pytest.approx((6 + 9) / 2 / 10)
    assert four.item() == pytest.approx(one.item())


def test_policy_loss_by_hand_with_clip_higher_and_dual_clip() -> None:
    logprobs = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(logprobs, old, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)  # ratio 1.5 clipped to 1.2; 0.5 not clipped (A > 0)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 2)
    loss, stats = policy_loss(logprobs, old, torch.tensor([-1.0]), mask, clip_c=1.3)
    assert loss.item() == pytest.approx((1.3 + 0.8) / 2)  # 1.5 bounded by the dual clip; 0.5 clipped up to 0.8
    assert stats["clip_fraction_lower"].item() == pytest.approx(0.5)
    # Clip-higher: a wider upper bound lets the positive-advantage ratio through further.
    loss, _ = policy_loss(logprobs, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 0.5) / 2)
    # Per-token advantages are taken as given.
    loss, _ = policy_loss(logprobs, old, torch.tensor([[1.0, -1.0]]), mask)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_zero_advantage_and_masked_tokens_get_exactly_zero_gradient(agg: str) -> None:
    torch.manual_seed(1)
    logprobs = torch.randn(4, 6, requires_grad=True)
    old = logprobs.detach() + 0.1 * torch.randn(4, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]] * 4)
    advantages = torch.tensor([0.0, 0.0, 1.3, -0.7])  # rows 0 and 1: a zero-variance group
    loss, _ = policy_loss(logprobs, old, advantages, mask, agg=agg)
    loss.backward()
    assert (logprobs.grad[:2] == 0).all()
    assert (logprobs.grad[:, 3:] == 0).all()
    assert (logprobs.grad[2:, :3] != 0).any()


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_micro_batches_with_batch_normalisers_give_the_batch_gradient(agg: str) -> None:
    torch.manual_seed(2)
    logprobs = torch.randn(6, 5, requires_grad=True)
    old = logprobs.detach() + 0.2 * torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    advantages = torch.randn(6)
    full, _ = policy_loss(logprobs, old, advantages, mask, agg=agg, horizon=5)
    (whole,) = torch.autograd.grad(full, logprobs)
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part, _ = policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows], agg=agg,
                              num_tokens=mask.sum(), num_seqs=6, horizon=5)  # fmt: skip
        total = total + part
    (accumulated,) = torch.autograd.grad(total, logprobs)
    assert torch.allclose(total, full.detach(), atol=1e-6)
    assert torch.allclose(accumulated, whole, atol=1e-6)


def test_kl_estimators_by_hand() -> None:
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    assert kl_penalty(torch.tensor([0.0]), torch.tensor([-100.0]), "k3").item() <= 10.0  # veRL's clamp
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(logp, ref, "k4")


def test_a_registered_estimator_and_loss_are_chosen_by_name() -> None:
    from lit_search_rl.grpo.losses import ADVANTAGES, POLICY_LOSSES, register_advantage, register_policy_loss

    @register_advantage("sign")
    def sign(centred, rewards, group, eps):
        return centred.sign()

    @register_policy_loss("reinforce")
    def reinforce(logprobs, old_logprobs, advantages, mask, **settings):
        return aggregate(-advantages[:, None] * logprobs, mask, settings["agg"]), {}

    try:
        rewards, ids = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0]), torch.tensor([0, 0, 0, 0, 1])
        assert group_advantages(rewards, ids, scale="sign").tolist() == [1.0, -1.0, -1.0, -1.0, 0.0]  # 1 alone: 0
        logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
        loss, _ = POLICY_LOSSES["reinforce"](logprobs, logprobs.detach(), torch.tensor([2.0]), torch.ones(1, 2),
                                             agg="token-mean")  # fmt: skip
        assert loss.item() == pytest.approx(3.0)
    finally:
        del ADVANTAGES["sign"], POLICY_LOSSES["reinforce"]


def test_zero_variance_advantages_follow_rl_zvps_rule() -> None:
    from lit_search_rl.grpo.losses import zero_variance_advantages

    entropy = torch.tensor([[0.5, 1.0, 2.0, 9.0], [0.2, 0.8, 0.4, 9.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 1]])  # the 9.0s are not the model's tokens
    grpo = torch.tensor([0.0, 0.0, 0.7])
    out = zero_variance_advantages(grpo, torch.tensor([1.0, -1.0, 0.0]), entropy, mask, alpha=0.1)
    assert torch.allclose(out[0], torch.tensor([0.05, 0.1, 0.2, 0.0]))  # all rewarded: alpha * H, >= 0
    # none rewarded: -alpha * (max H - H), the max over the model's own tokens (0.8, not the masked 9.0)
    assert torch.allclose(out[1], torch.tensor([-0.06, 0.0, -0.04, 0.0]))
    assert torch.equal(out[2], torch.tensor([0.7, 0.7, 0.0, 0.7]))  # a signal group keeps GRPO's, masked to 0
    assert not out.requires_grad  # the entropy is a number, not a path for the gradient
