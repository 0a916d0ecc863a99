"""The update maths of GRPO (``grpo/update.py``), called as functions on a policy: gradient invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_search_rl.grpo.config import LossConfig
from lit_search_rl.grpo.losses import group_advantages, token_entropy
from lit_search_rl.grpo.update import (
    UpdateBatch,
    accumulate_gradients,
    frozen_logprobs,
    make_update_batch,
    token_logprobs,
)
from lit_search_rl.policy import load_policy


class Update:
    """A policy and its loss settings: the update called as a function, with no module and no trainer."""

    def __init__(self, model_dir: Path, micro: int = 8, agg: str = "token-mean") -> None:
        self.policy = load_policy(str(model_dir)).train()
        self.loss, self.micro = LossConfig(loss_agg=agg), micro

    def accumulate(self, batch: UpdateBatch) -> tuple[bool, dict[str, float]]:
        return accumulate_gradients(self.policy, batch, self.loss, self.micro, horizon=2048)


def random_batch(policy: torch.nn.Module, groups: list[list[float]], width: int = 12) -> UpdateBatch:
    """Random token rows with ragged trainable spans, group advantages, and slightly off-policy old logprobs."""
    torch.manual_seed(0)
    n = sum(len(g) for g in groups)
    vocab = policy.config.vocab_size
    input_ids = torch.randint(3, vocab, (n, width))
    loss_mask = torch.zeros(n, width, dtype=torch.long)
    loss_mask[:, 5:] = 1
    loss_mask[::3, 9:] = 0  # ragged responses
    rewards = torch.tensor([r for g in groups for r in g])
    ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    batch = UpdateBatch(input_ids, torch.ones_like(input_ids), loss_mask, group_advantages(rewards, ids))
    batch.old_logprobs = frozen_logprobs(policy, batch, 8) + 0.05 * torch.randn(n, width - 1)
    return batch


def grads(m: Update) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.policy.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batching_gives_the_same_gradient(model_dir: Path, agg: str) -> None:
    m = Update(model_dir, micro=8, agg=agg)
    batch = random_batch(m.policy, [[1, 0, 0, 1], [0, 1, 1, 1]])
    m.accumulate(batch)
    whole = grads(m)
    for micro in (1, 2, 4):
        m.policy.zero_grad(set_to_none=True)
        m.micro = micro
        m.accumulate(batch)
        for name, g in grads(m).items():
            assert torch.allclose(g, whole[name], atol=1e-6, rtol=1e-4), (micro, name)


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_a_fully_masked_row_changes_no_gradient(model_dir: Path, agg: str) -> None:
    # A row without a trainable token (a filler row of data parallelism, an empty response) is not a
    # sequence of the seq-mean: adding one leaves the loss and gradient as they were.
    m = Update(model_dir, micro=4, agg=agg)
    batch = random_batch(m.policy, [[1, 0, 0, 1], [0, 1, 1, 1]])
    _, before = m.accumulate(batch)
    without = grads(m)
    m.policy.zero_grad(set_to_none=True)
    padded = UpdateBatch(torch.cat([batch.input_ids, batch.input_ids[:1]]),
                         torch.cat([batch.attention_mask, batch.attention_mask[:1]]),
                         torch.cat([batch.loss_mask, torch.zeros_like(batch.loss_mask[:1])]),
                         torch.cat([batch.advantages, torch.ones(1)]),
                         torch.cat([batch.old_logprobs, batch.old_logprobs[:1]]))  # fmt: skip
    _, after = m.accumulate(padded)
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
    for name, g in grads(m).items():
        assert torch.allclose(g, without[name], atol=1e-7, rtol=1e-5), name


def test_update_batch_counts_only_sequences_with_trainable_tokens(model_dir: Path) -> None:
    from lit_search_rl.rollout.agent import Trajectory

    groups = [[Trajectory([5, 6], [7, 8], [1, 1]), Trajectory([5, 6], [9], [0])],  # the second: nothing trainable
              [Trajectory([5], [7, 8, 9], [1, 0, 1]), Trajectory([5], [8], [1])]]  # fmt: skip
    batch = make_update_batch(groups, [[1.0, 0.0], [0.0, 1.0]], [0, 1], pad_id=0)
    assert batch.num_seqs == 3 and batch.num_tokens == 5.0


def test_on_policy_pass_equals_a_frozen_old_logprob_pass(model_dir: Path) -> None:
    # One update pass uses the training forward's own detached logprobs as pi_old: the same gradient
    # as logprobs from a separate no-grad forward, without running that forward.
    m = Update(model_dir, micro=4)
    batch = random_batch(m.policy, [[1, 0, 0, 1], [0, 1, 1, 1]])
    batch.old_logprobs = frozen_logprobs(m.policy, batch, m.micro)
    m.accumulate(batch)
    frozen = grads(m)
    m.policy.zero_grad(set_to_none=True)
    batch.old_logprobs = None
    m.accumulate(batch)
    for name, g in grads(m).items():
        assert torch.allclose(g, frozen[name], atol=1e-7, rtol=1e-5), name


def test_clip_settings_change_nothing_in_an_on_policy_pass(model_dir: Path) -> None:
    # With one update epoch the ratio is 1 on every token, so no clip is ever active: clip-higher and a
    # tight clip give the gradient of the default. Off-policy old logprobs make the tight clip bite.
    m = Update(model_dir, micro=4)
    batch = random_batch(m.policy, [[1, 0, 0, 1], [0, 1, 1, 1]])
    off_policy = batch.old_logprobs
    results = {}
    for old in ("on", "off"):
        batch.old_logprobs = None if old == "on" else off_policy
        for clip in ((0.2, 0.2), (0.2, 0.28), (0.01, 0.01)):
            m.loss = LossConfig(clip_low=clip[0], clip_high=clip[1])
            m.policy.zero_grad(set_to_none=True)
            m.accumulate(batch)
            results[old, clip] = grads(m)
    for clip in ((0.2, 0.28), (0.01, 0.01)):
        for name, g in results["on", clip].items():
            assert torch.equal(g, results["on", (0.2, 0.2)][name]), (clip, name)
    tight, default = results["off", (0.01, 0.01)], results["off", (0.2, 0.2)]
    assert any(not torch.allclose(tight[n], default[n]) for n in default)


def test_zero_variance_groups_add_exactly_nothing(model_dir: Path) -> None:
    m = Update(model_dir, micro=8)
    with_flat = random_batch(m.policy, [[1, 0, 0, 1], [1, 1, 1, 1]])
    m.accumulate(with_flat)
    both = grads(m)
    # The zero-variance group's own gradient is exactly zero.
    m.policy.zero_grad(set_to_none=True)
    only_flat = UpdateBatch(with_flat.input_ids[4:], with_flat.attention_mask[4:], with_flat.loss_mask[4:],
                            with_flat.advantages[4:], with_flat.old_logprobs[4:])  # fmt: skip
    m.accumulate(only_flat)
    assert all((g == 0).all() for g in grads(m).values())
    assert any((g != 0).any() for g in both.values())


def test_masked_tokens_get_no_gradient(model_dir: Path) -> None:
    m = Update(model_dir, micro=2)
    batch = random_batch(m.policy, [[1, 0]], width=10)
    batch.loss_mask[:, :] = 0
    finite, totals = m.accumulate(batch)
    assert finite and totals["loss"] == 0.0
    assert all((g == 0).all() for g in grads(m).values())


def test_rl_zvp_trains_the_zero_variance_groups_and_reports_their_share(model_dir: Path) -> None:
    from lit_search_rl.rollout.agent import Trajectory

    def group(rewards: list[float]) -> list[Trajectory]:
        return [Trajectory([5, 6, 7], [8 + i, 9, 10], [1, 1, 1], [0.0, 0.0, 0.0]) for i, _ in enumerate(rewards)]

    rewards = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]  # signal, all rewarded, none rewarded
    groups = [group(r) for r in rewards]
    plain = make_update_batch(groups, rewards, [0], pad_id=0)
    zvp = make_update_batch(groups, rewards, [0], pad_id=0, zero_variance=True)
    assert plain.input_ids.shape[0] == 2 and plain.zero_variance is None
    assert zvp.input_ids.shape[0] == 6 and zvp.zero_variance.tolist() == [0, 0, 1, 1, -1, -1]
    m = Update(model_dir)
    m.loss.zero_variance_advantage = True
    only_flat = make_update_batch(groups, rewards, [], pad_id=0, zero_variance=True)
    finite, totals = m.accumulate(only_flat)
    assert finite and totals["zero_variance_mass"] == totals["advantage_mass"] > 0
    assert any((g != 0).any() for g in grads(m).values())  # where GRPO gives exactly nothing, RL-ZVP trains


def test_logprobs_are_those_of_a_full_forward_where_the_loss_reads_them(model_dir: Path) -> None:
    policy = load_policy(str(model_dir)).train()
    batch = random_batch(policy, [[1, 0, 0, 1], [0, 1, 1, 1]])
    batch.loss_mask[1, :] = 0  # a row with nothing of its own
    logprobs, entropy = token_logprobs(policy, batch, slice(0, 8))
    mask = batch.loss_mask[:, 1:].bool()
    torch.autograd.backward((logprobs * mask).sum())
    ours = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    full = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].log_softmax(-1)
    expected = full.gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    torch.autograd.backward((expected * mask).sum())
    assert torch.allclose(logprobs[mask], expected[mask], atol=1e-6)
    assert torch.allclose(entropy[mask], token_entropy(full)[mask].detach(), atol=1e-5)
    skipped = ~mask.any(0)  # no row predicts a token of its own there
    assert skipped.any() and (logprobs[:, skipped] == 0).all() and (entropy[:, skipped] == 0).all()
    for name, p in policy.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_a_micro_batch_runs_to_its_own_longest_row(model_dir: Path) -> None:
    # Rows are right-padded to the batch's longest; a micro-batch of short rows is cut to its own longest, and
    # gives what each row gives in a forward of its own, unpadded.
    policy = load_policy(str(model_dir)).eval()
    torch.manual_seed(0)
    lengths, width = [7, 12, 5], 20
    input_ids = torch.randint(3, policy.config.vocab_size, (3, width))
    attention = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    loss_mask = attention.clone()
    loss_mask[:, :3] = 0
    batch = UpdateBatch(input_ids, attention, loss_mask, torch.zeros(3))
    widths = []
    hook = policy.register_forward_pre_hook(lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                            with_kwargs=True)  # fmt: skip
    with torch.no_grad():
        logprobs, _ = token_logprobs(policy, batch, slice(0, 3))
        hook.remove()
        for row, n in enumerate(lengths):
            alone = policy(input_ids=input_ids[row : row + 1, :n]).logits[0, :-1].log_softmax(-1)
            expected = alone.gather(-1, input_ids[row, 1:n, None])[..., 0]
            trained = loss_mask[row, 1:n].bool()
            assert torch.allclose(logprobs[row, : n - 1][trained], expected[trained], atol=1e-5)
    assert widths == [12] and logprobs.shape == (3, width - 1) and (logprobs[:, 11:] == 0).all()


def test_update_rows_are_ordered_by_length_with_their_advantages() -> None:
    # Rows of similar length side by side, so that each micro-batch wastes little on padding; each row keeps
    # its own advantage and engine logprobs.
    from lit_search_rl.rollout.agent import Trajectory

    groups = [
        [Trajectory([5] * 9, [7, 8], [1, 1], [-0.1, -0.2]), Trajectory([5], [9], [1], [-0.3])],
        [Trajectory([5] * 4, [7, 8, 9], [1, 0, 1], [-0.4, 0.0, -0.5]), Trajectory([5, 6], [8], [1], [-0.6])],
    ]
    rewards = [[1.0, 0.0], [0.0, 1.0]]
    batch = make_update_batch(groups, rewards, [0, 1], pad_id=0)
    lengths = batch.attention_mask.sum(1).tolist()
    assert lengths == sorted(lengths) == [2, 3, 7, 11]
    assert batch.advantages.sign().tolist() == [-1.0, 1.0, -1.0, 1.0]  # rows: g0/t1, g1/t1, g1/t0, g0/t0
    assert batch.rollout_logprobs[0, 0].item() == pytest.approx(-0.3)
    assert batch.rollout_logprobs[3, 8:10].tolist() == pytest.approx([-0.1, -0.2])
