"""The query strategies (``data/strategies.py``): weight rules, round caps, and the options each reads."""

from __future__ import annotations

import pytest

from lit_search_rl.data.pool import QueryPool
from lit_search_rl.data.query_sampler import draw_step
from lit_search_rl.data.strategies import STRATEGIES, check_options, make_strategy

IDS = [f"q{i}" for i in range(40)]


def test_unknown_strategies_and_unread_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'ppo'; choose one of bounded_dapo, dapo, grpo, recycle"):
        make_strategy("ppo", batch_size=2)
    with pytest.raises(ValueError, match="data.recycled_weight is 0.1 but strategy grpo does not use it .only recycle"):
        check_options("grpo", "data.", recycled_weight=0.1)
    with pytest.raises(ValueError, match="data.max_rounds is 3 but strategy recycle does not use it .only dapo"):
        check_options("recycle", "data.", max_rounds=3)
    with pytest.raises(ValueError, match="model.oversample is 2 but strategy dapo does not use it"):
        check_options("dapo", "model.", oversample=2)
    check_options("recycle", "model.", oversample=2, recycled_weight=0.1, max_rounds=None)
    check_options("grpo", "model.", oversample=1)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_weight_rules(name: str) -> None:
    strategy = make_strategy(name, batch_size=2, oversample=3, max_rounds=3, recycled_weight=0.1)
    pool = QueryPool(IDS, seed=0)
    outcomes = ["too_hard", "signal", "too_easy", "signal", "signal", "too_hard"]
    result = draw_step(pool, strategy, lambda idx: outcomes[: len(idx)])
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
    result = draw_step(pool, strategy, lambda idx: ["too_hard"] * len(idx))
    assert result.chosen == [] and len(result.drawn) == 12


def test_recycled_share_counts_queries_returned_within_the_epoch() -> None:
    strategy = make_strategy("recycle", batch_size=1, oversample=2)
    pool = QueryPool(["a", "b"])
    first = draw_step(pool, strategy, lambda idx: ["too_hard", "too_hard"])
    assert first.chosen == [] and pool.active == 2
    second = draw_step(pool, strategy, lambda idx: ["signal", "too_hard"])
    assert second.recycled == 1 and pool.active == 1
