"""Per-query rollout budgets (``data/allocation.py``): Knapsack RL's rule, its place in a step, unequal groups."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_search_rl.data.allocation import KnapsackAllocator, knapsack_sizes, make_allocator, value
from lit_search_rl.data.pool import QueryPool
from lit_search_rl.data.qa import QARecord
from lit_search_rl.data.query_sampler import QuerySampler
from lit_search_rl.data.strategies import make_strategy
from lit_search_rl.grpo.losses import group_advantages

ESTIMATE = st.one_of(st.none(), st.sampled_from([0.0, 1.0]), st.floats(0.01, 0.99))


@settings(max_examples=200, deadline=None)
@given(st.lists(ESTIMATE, min_size=1, max_size=24), st.integers(2, 8), st.integers(0, 400))
def test_the_budget_is_spent_exactly_and_every_minimum_is_met(estimates, k: int, extra: int) -> None:
    minimum = sum(k if p is None else 2 for p in estimates)
    sizes = knapsack_sizes(estimates, minimum + extra, k)
    assert sum(sizes) == minimum + extra
    assert all(n >= (k if p is None else 2) for n, p in zip(sizes, estimates, strict=True))
    open_ = [n for n, p in zip(sizes, estimates, strict=True) if p is not None and 0 < p < 1]
    if open_ and max(open_) < 128:  # while an open query can take more, no budget goes elsewhere
        assert all(n == 2 for n, p in zip(sizes, estimates, strict=True) if p in (0.0, 1.0))


def test_uncertain_queries_get_more_than_nearly_solved_ones_and_the_rule_holds() -> None:
    sizes = knapsack_sizes([0.5, 0.95, None, 0.0, 1.0, 0.2], total=24, group_size=4)
    assert sum(sizes) == 24
    half, solved, unseen, never, always, hard = sizes
    assert half > solved and unseen == 4 and never == 2 and always == 2
    assert half > 2 and hard > 2
    assert value(2, 0.0) == value(2, 1.0) == 0.0  # no chance of a signal group: nothing to gain


def test_capped_budget_goes_evenly_to_the_never_solved_queries() -> None:
    sizes = knapsack_sizes([0.5, 0.0, 0.0, 1.0], total=2 + 2 + 2 + 2 + (128 - 2) + 10, group_size=4, cap=128)
    assert sizes == [128, 7, 7, 2]
    assert knapsack_sizes([1.0, 1.0], total=9, group_size=4) == [5, 4]  # nobody else: evenly to all


def test_a_budget_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="a rollout budget of 5 cannot give 2 queries their minimum"):
        knapsack_sizes([None, 0.3], total=5, group_size=4)
    pool = QueryPool(["a", "b", "c"])
    with pytest.raises(ValueError, match="data.rollout_budget: a rollout budget of 7 cannot give 2 queries"):
        KnapsackAllocator(group_size=4, budget=7).sizes(pool, [0, 1])
    with pytest.raises(ValueError, match="unknown rollout allocator 'knapsak'"):
        make_allocator("knapsak", 4)


def test_a_step_gives_each_query_its_budget_from_its_last_group() -> None:
    records = [QARecord(id=f"q{i}", question=f"question {i}", golden_answers=["a"]) for i in range(8)]
    pool = QueryPool([r.id for r in records], seed=0)
    sampler = QuerySampler(records, make_strategy("recycle", 2, oversample=2), pool,
                           allocator=KnapsackAllocator(group_size=4))  # fmt: skip
    seen: list[dict[str, int]] = []
    rate = {"q0": 1.0, "q1": 0.0}  # the rest: half right

    def rewards(batch, sizes):
        seen.append({r.id: n for r, n in zip(batch, sizes, strict=True)})
        share = [rate.get(r.id, 0.5) for r in batch]
        return [[float(j < p * n) for j in range(n)] for p, n in zip(share, sizes, strict=True)]

    for _ in range(6):
        result = sampler.step(rewards)
        assert sum(result.sizes) == 4 * 4  # k * B candidates of K each: the fixed budget
    before: set[str] = set()
    for step in seen:
        for q, n in step.items():
            if q not in before:
                assert n == 4  # never rolled out: K
            elif q in rate:
                assert n == 2  # last solved always, or never: the floor
        before |= set(step)
    last = next(step["q2"] for step in reversed(seen) if "q2" in step)
    assert pool.success[2] == sum(j < 0.5 * last for j in range(last)) / last  # the share of its last group
    assert "train/rollouts_per_query_max" in sampler.metrics(result)


def test_groups_of_different_sizes_are_normalised_each_within_itself() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3])  # sizes 2, 3, 5 and a zero-variance pair
    advantages = group_advantages(rewards, ids)
    for group in range(3):
        r = rewards[ids == group]
        assert torch.allclose(advantages[ids == group], (r - r.mean()) / (r.std() + 1e-6))
    assert (advantages[ids == 3] == 0).all()


def test_the_data_module_resumes_with_the_same_draws_and_budgets(world_dir) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    def rewards(records, sizes):  # deterministic in the question: a third solved, a third not, a third half
        share = [(1.0, 0.0, 0.5)[int(r.id.split("-")[-1]) % 3] for r in records]
        return [[float(j < p * n) for j in range(n)] for p, n in zip(share, sizes, strict=True)]

    def run(dm, steps):
        return [(r.drawn, r.sizes) for r in (dm.sampler.step(rewards) for _ in range(steps))]

    def make():
        return RecyclingDataModule(str(world_dir / "train.jsonl"), allocator="knapsack", batch_size=3,
                                   oversample=2, group_size=4, seed=4)  # fmt: skip

    whole = make()
    whole.setup("fit")
    uninterrupted = run(whole, 6)
    assert len({n for _, sizes in uninterrupted for n in sizes}) > 1  # budgets differed between queries
    first = make()
    first.setup("fit")
    head = run(first, 3)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    resumed.setup("fit")
    assert head + run(resumed, 3) == uninterrupted


def test_misplaced_budget_is_refused_naming_the_option() -> None:
    from lit_search_rl.checks import check_recycling_settings

    with pytest.raises(ValueError, match="data.rollout_budget is 64 but data.allocator is 'fixed', not knapsack"):
        check_recycling_settings({"rollout_budget": 64})
    with pytest.raises(ValueError, match="data.allocator must be one of fixed, knapsack"):
        check_recycling_settings({"allocator": "greedy"})
