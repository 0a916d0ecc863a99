"""The query pool (``data/pool.py``): draws, weights, flips, exhaustion, and the outcome of a group."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lit_search_rl.data.pool import PoolExhausted, QueryPool, classify_group

IDS = [f"q{i}" for i in range(40)]


def test_bad_pools_fail_clearly() -> None:
    with pytest.raises(ValueError, match="duplicate query ids in the training set: 'a', 'b'"):
        QueryPool(["a", "b", "a", "c", "b"])
    with pytest.raises(ValueError, match="empty"):
        QueryPool([])
    pool = QueryPool(IDS[:3])
    with pytest.raises(ValueError, match="a draw of 5 queries needs a pool at least that large"):
        pool.draw(5)


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


def test_group_classification() -> None:
    assert classify_group([1.0, 0.0, 0.0, 1.0]) == "signal"
    assert classify_group([1.0] * 4) == "too_easy"
    assert classify_group([0.0] * 4) == "too_hard"
    assert classify_group([0.5, 0.5]) == "too_easy"  # non-binary: zero variance, rewarded
    # A NaN compares false with everything: refused, rather than classified by its position.
    for rewards in ([math.nan, 1.0], [1.0, math.nan], [math.nan, math.nan], [0.0, math.inf]):
        with pytest.raises(ValueError, match="finite"):
            classify_group(rewards)
