"""The query pool and the sampling strategies, driven with no model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lit_search_rl.data.pool import OUTCOMES, PoolExhausted, QueryPool, outcome_of
from lit_search_rl.data.recycling import sampling_step
from lit_search_rl.data.strategies import STRATEGIES, make_strategy

IDS = [f"q{i}" for i in range(40)]


def test_bad_pools_fail_clearly() -> None:
    with pytest.raises(ValueError, match="duplicate query ids in the training set: 'a', 'b'"):
        QueryPool(["a", "b", "a", "c", "b"])
    with pytest.raises(ValueError, match="empty"):
        QueryPool([])
    pool = QueryPool(IDS[:3])
    with pytest.raises(ValueError, match="a draw of 5 queries needs a pool at least that large"):
        pool.draw(5)
    with pytest.raises(ValueError, match="unknown strategy 'ppo'; choose one of bounded_dapo, dapo, grpo, recycle"):
        make_strategy("ppo", batch_size=2)


def test_draws_are_distinct_and_proportional_to_weight() -> None:
    pool = QueryPool(["a", "b", "c", "d"], seed=3)
    pool.report([0, 1], ["signal", "signal"], [3.0, 0.0])  # a: weight 3, b: consumed
    counts = np.zeros(4)
    for _ in range(6000):
        drawn = pool.draw(1)
        counts[drawn] += 1
    assert counts[1] == 0
    assert abs(counts[0] / counts.sum() - 0.6) < 0.03  # 3 / (3 + 1 + 1)
    draws = [pool.draw(3) for _ in range(50)]
    assert all(len(set(d.tolist())) == 3 for d in draws)


def test_draws_finish_when_weights_differ_by_many_orders_of_magnitude() -> None:
    pool = QueryPool(IDS[:6], seed=2)
    pool.report([0, 1, 2, 3], ["too_hard"] * 4, [1e-300, 5e-324, 1e-200, 1.0])
    for _ in range(20):
        assert sorted(pool.draw(6).tolist()) == list(range(6))  # the whole pool, tiny weights included
        assert len(set(pool.draw(5).tolist())) == 5


def test_exhaustion_policies() -> None:
    pool = QueryPool(IDS[:4], exhaustion="stop")
    pool.report([0, 1, 2], ["signal"] * 3, [0.0] * 3)
    with pytest.raises(PoolExhausted, match="only 1 active queries are left for a draw of 2"):
        pool.draw(2)
    pool = QueryPool(IDS[:4], exhaustion="reset")
    pool.report([0, 1, 2], ["signal"] * 3, [0.0] * 3)
    assert len(pool.draw(2)) == 2 and pool.epoch == 1 and pool.active == 4


def test_flips_are_counted_by_kind() -> None:
    pool = QueryPool(IDS[:3])
    pool.report([0, 1, 2], ["too_hard", "too_easy", "signal"], [1.0, 1.0, 1.0])
    assert pool.report([0, 1, 2], ["signal", "signal", "signal"], [1.0] * 3) == {"recovery": 1, "drift": 1}


def test_outcome_of() -> None:
    assert [outcome_of(c, 4) for c in (0, 1, 3, 4)] == ["too_hard", "signal", "signal", "too_easy"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_weight_rules(name: str) -> None:
    strategy = make_strategy(name, batch_size=2, oversample=3, max_rounds=3, recycled_weight=0.1)
    pool = QueryPool(IDS, seed=0)
    outcomes = ["too_hard", "signal", "too_easy", "signal", "signal", "too_hard"]
    result = sampling_step(pool, strategy, lambda idx: outcomes[: len(idx)])
    assert len(result.chosen) <= 2 and all(pool.last_outcome[i] == 1 for i in result.chosen)
    weights = {i: pool.weights[i] for i in result.drawn}
    if name == "recycle":
        # Only the used signal groups are consumed; the rest come back with the recycled weight.
        assert all(weights[i] == 0.0 for i in result.chosen)
        assert all(weights[i] == pytest.approx(0.1) for i in result.drawn if i not in result.chosen)
        assert len(result.drawn) == 6
    else:
        assert all(w == 0.0 for w in weights.values())  # every drawn query consumed
    if name == "grpo":
        assert len(result.drawn) == 2
    if name == "dapo":
        assert len(result.chosen) == 2 and len(result.drawn) == 4  # two rounds of B to find B signal groups


def test_dapo_stops_at_its_round_cap() -> None:
    strategy = make_strategy("dapo", batch_size=4, max_rounds=3)
    pool = QueryPool(IDS)
    result = sampling_step(pool, strategy, lambda idx: ["too_hard"] * len(idx))
    assert result.chosen == [] and len(result.drawn) == 12


def test_recycled_share_counts_queries_returned_within_the_epoch() -> None:
    strategy = make_strategy("recycle", batch_size=1, oversample=2)
    pool = QueryPool(["a", "b"])
    first = sampling_step(pool, strategy, lambda idx: ["too_hard", "too_hard"])
    assert first.chosen == [] and pool.active == 2
    second = sampling_step(pool, strategy, lambda idx: ["signal", "too_hard"])
    assert second.recycled == 1 and pool.active == 1


@settings(max_examples=60, deadline=None)
# Recycled weights far below 1: a pool restored from a checkpoint must draw as the running pool does, even
# where rebuilding the running sums from the weights would round differently.
@example("recycle", [["too_hard"] * 12] * 8, 5, 2.220446049250313e-16)
@given(
    st.sampled_from(sorted(STRATEGIES)),
    st.lists(st.lists(st.sampled_from(OUTCOMES), min_size=12, max_size=12), min_size=1, max_size=25),
    st.integers(0, 25),
    st.floats(0.0, 1.0),
)
def test_no_query_is_lost_or_duplicated_and_restores_draw_identically(name, steps, save_at, recycled_weight) -> None:
    strategy = make_strategy(name, batch_size=3, oversample=2, max_rounds=2, recycled_weight=recycled_weight)
    pool = QueryPool(IDS, seed=5)
    saved = None
    rounds = iter(steps * 4)

    def outcomes(idx):
        return next(rounds)[: len(idx)]

    for n, _ in enumerate(steps):
        if n == save_at:
            saved = pool.state_dict()
            ahead = [next(rounds) for _ in range(4)]  # the same outcomes for both runs
            feed = iter(ahead)
            later = [sampling_step(pool, strategy, lambda idx, f=feed: next(f)[: len(idx)]).drawn for _ in range(2)]
            restored = QueryPool(IDS, seed=99)  # another seed: the state must carry the generator
            restored.load_state_dict(saved)
            feed = iter(ahead)
            again = [sampling_step(restored, strategy, lambda idx, f=feed: next(f)[: len(idx)]).drawn
                     for _ in range(2)]  # fmt: skip
            assert again == later
            assert np.array_equal(restored.weights, pool.weights)
            break
        result = sampling_step(pool, strategy, outcomes)
        assert len(set(result.drawn)) == len(result.drawn) or pool.epoch > 0  # a new epoch may repeat a query
        assert set(result.chosen) <= set(result.drawn)
        # Every query is in exactly one state, and the counts agree with the weights.
        assert pool.active + pool.consumed == len(IDS) and pool.active == int((pool.weights > 0).sum())
        assert (pool.weights >= 0).all()


def test_recycling_datamodule_resumes_with_the_same_draws(world_dir) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    def outcome(records, idx):  # deterministic in the question
        return [("signal", "too_hard", "too_easy")[int(r.id.split("-")[-1]) % 3] for r in records]

    def run(dm, steps):
        return [dm.sampling_step(outcome).drawn for _ in range(steps)]

    make = lambda: RecyclingDataModule(str(world_dir / "train.jsonl"), batch_size=3, oversample=2, seed=4)  # noqa: E731
    whole = make()
    whole.setup("fit")
    uninterrupted = run(whole, 6)
    first = make()
    first.setup("fit")
    head = run(first, 3)
    saved = first.state_dict()
    resumed = make()
    resumed.load_state_dict(saved)  # before setup, as when Lightning restores a checkpoint
    resumed.setup("fit")
    assert head + run(resumed, 3) == uninterrupted


class ScoringFailed(Exception):
    pass


def fail_on_round(n: int):
    """Outcomes for ``sampling_step`` that raise on the n-th round, as a failing reward does."""
    rounds = iter(range(10**6))

    def outcomes(idx):
        if next(rounds) == n:
            raise ScoringFailed("the reward raised")
        return ["signal" if i % 2 else "too_hard" for i in idx]

    return outcomes


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_failed_scoring_leaves_the_draw_undone(name: str) -> None:
    # No query whose group was not scored is consumed, and the pool draws next exactly as if the
    # failed draw never happened (a checkpoint written after the failure resumes exactly).
    pool, twin = QueryPool(IDS, seed=5), QueryPool(IDS, seed=5)
    strategy = make_strategy(name, batch_size=4, oversample=2, max_rounds=3)
    sampling_step(pool, strategy, fail_on_round(10))  # one step that succeeds on both
    sampling_step(twin, strategy, fail_on_round(10))
    before = pool.state_dict()
    with pytest.raises(ScoringFailed):
        sampling_step(pool, strategy, fail_on_round(0))
    after = pool.state_dict()
    assert pool.active == twin.active and (pool.weights == before["weights"]).all()
    assert all(np.array_equal(after[k], before[k]) if isinstance(before[k], np.ndarray) else after[k] == before[k]
               for k in before)  # fmt: skip
    assert (pool.draw(8) == twin.draw(8)).all()


def test_a_failed_later_round_undoes_the_whole_step() -> None:
    # DAPO's second round fails after the first was reported: the first round's consumed queries come back too.
    pool = QueryPool(IDS, seed=2)
    before = pool.state_dict()
    with pytest.raises(ScoringFailed):
        sampling_step(pool, make_strategy("dapo", batch_size=4, max_rounds=3), fail_on_round(1))
    assert pool.active == len(IDS) and pool.counters == before["counters"]
    assert (pool.last_outcome == before["last_outcome"]).all() and (pool.times_drawn == 0).all()


def test_a_failed_scoring_at_an_epoch_boundary_restores_the_old_epoch() -> None:
    pool = QueryPool(IDS[:6], seed=1)
    pool.report(pool.draw(4), ["signal"] * 4, [0.0] * 4)  # 2 active: the next draw of 4 starts an epoch
    before = pool.state_dict()
    strategy = make_strategy("grpo", batch_size=4)
    with pytest.raises(ScoringFailed):
        sampling_step(pool, strategy, fail_on_round(0))
    assert pool.epoch == before["epoch"] == 0 and pool.active == 2
    assert (pool.weights == before["weights"]).all() and (pool.epoch_draws == before["epoch_draws"]).all()
    assert pool.counters == before["counters"]


def test_recycling_datamodule_keeps_the_drawn_queries_active_when_scoring_fails(world_dir) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    dm = RecyclingDataModule(str(world_dir / "train.jsonl"), batch_size=3, oversample=2, seed=4)
    dm.setup("fit")
    dm.sampling_step(lambda records, idx: ["signal"] * len(records))  # 3 consumed
    digest, active = dm.pool_digest(), dm.pool.active

    def failing(records, idx):
        raise ValueError(f"reward my:fn raised ValueError on question {records[0].id}: boom")

    with pytest.raises(ValueError, match="reward my:fn"):
        dm.sampling_step(failing)
    assert dm.pool.active == active == len(dm.records) - 3 and dm.pool_digest() == digest
