"""History-aware pool weightings (``data/weighting.py``): GRESO's streak factors, its controller, composition."""

from __future__ import annotations

import numpy as np
import pytest

from lit_search_rl.data.pool import QueryPool
from lit_search_rl.data.qa import QARecord
from lit_search_rl.data.query_sampler import QuerySampler
from lit_search_rl.data.strategies import make_strategy
from lit_search_rl.data.weighting import GRESOWeighting, make_weighting


def report(pool: QueryPool, outcomes: dict[int, str], weight: float = 1.0) -> None:
    indices = sorted(outcomes)
    pool.report(indices, [outcomes[i] for i in indices], [weight] * len(indices))


def test_streaks_decay_geometrically_down_to_the_floor() -> None:
    pool = QueryPool([str(i) for i in range(5)])
    for _ in range(3):
        report(pool, {0: "too_easy", 1: "too_hard"})
    report(pool, {2: "too_easy"})
    report(pool, {2: "signal"})  # a signal group ends the streak
    for _ in range(9):
        report(pool, {3: "too_hard"})
    assert pool.streak.tolist() == [3, 3, 1, 9, 0]
    greso = GRESOWeighting()  # p_easy = p_hard = 0.5
    greso.p_easy = 0.6
    factors = greso.factors(pool)
    assert factors[0] == pytest.approx(0.6**3) and factors[1] == pytest.approx(0.5**3)
    assert factors[2] == 1.0 and factors[4] == 1.0  # after a signal group, and never drawn
    assert factors[3] == 0.01  # 0.5 ** 9 is below the floor: still drawable
    report(pool, {0: "too_hard"})  # another kind starts a new streak
    assert pool.streak[0] == 1 and greso.factors(pool)[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("outcomes", "easy", "hard"),
    [
        (["too_easy"] * 8, 0.49, 0.51),  # all easy: draw easy streaks less, hard ones more
        (["too_hard"] * 8, 0.51, 0.49),
        (["signal"] * 8, 0.51, 0.51),  # no zero-variance group at all: draw them more
        (["too_easy"] * 2 + ["too_hard"] * 4 + ["signal"] * 18, 0.50, 0.50),  # shares 1/12 and 1/6: on target
    ],
)
def test_the_controller_moves_each_probability_toward_its_target(outcomes, easy, hard) -> None:
    greso = GRESOWeighting(alpha=0.25)
    pool = QueryPool([str(i) for i in range(4)])
    greso.update(pool, outcomes)
    assert (greso.p_easy, greso.p_hard) == (pytest.approx(easy), pytest.approx(hard))


def test_the_controller_stays_within_its_bounds() -> None:
    greso, pool = GRESOWeighting(), QueryPool(["a", "b"])
    for _ in range(100):
        greso.update(pool, ["too_easy"])
    assert greso.p_easy == 0.05 and greso.p_hard == 0.95


def test_factors_scale_draws_and_never_revive_a_consumed_query() -> None:
    pool = QueryPool([str(i) for i in range(3)], seed=1)
    report(pool, {0: "too_easy"}, weight=0.0)  # consumed, as a used query is under recycling
    report(pool, {1: "too_hard"})
    for _ in range(3):
        report(pool, {1: "too_hard"})  # a streak of 4: factor 0.5 ** 4 against query 2's 1
    GRESOWeighting().update(pool, [])
    counts = np.zeros(3)
    for _ in range(4000):
        counts[pool.draw(1)] += 1
    assert counts[0] == 0
    assert counts[1] / counts.sum() == pytest.approx(0.0625 / 1.0625, abs=0.015)


@pytest.mark.parametrize("strategy", ["recycle", "bounded_dapo", "dapo"])
def test_greso_composes_with_each_strategy_and_reports_its_state(strategy: str) -> None:
    records = [QARecord(id=f"q{i}", question=f"question {i}", golden_answers=["a"]) for i in range(60)]
    pool = QueryPool([r.id for r in records], seed=2)
    sampler = QuerySampler(records, make_strategy(strategy, 4, oversample=2, max_rounds=2), pool,
                           weighting=make_weighting("greso"))  # fmt: skip

    def outcomes(batch):  # every third question always solved, every third never
        return [("too_easy", "too_hard", "signal")[int(r.id[1:]) % 3] for r in batch]

    for _ in range(30):  # several epochs of 60 questions
        metrics = sampler.metrics(sampler.step(outcomes))
    assert {"pool/greso_p_easy", "pool/greso_p_hard", "pool/lowered_fraction", "pool/mean_factor"} <= set(metrics)
    easy = [i for i in range(60) if i % 3 == 0 and pool.streak[i] >= 2]
    assert easy and (pool.factors[easy] < 1).all()  # solved again and again: drawn less
    assert (pool.factors[[i for i in range(60) if i % 3 == 2]] == 1).all()  # signal questions untouched


def test_unknown_weighting_and_misplaced_alpha_are_refused() -> None:
    from lit_search_rl.checks import check_recycling_settings

    with pytest.raises(ValueError, match="unknown pool weighting 'gresso'"):
        make_weighting("gresso")
    with pytest.raises(ValueError, match="data.greso_alpha is 0.3 but data.weighting is 'none'"):
        check_recycling_settings({"weighting": "none", "greso_alpha": 0.3})
    with pytest.raises(ValueError, match=r"data.greso_alpha must be in \(0, 1\]"):
        check_recycling_settings({"weighting": "greso", "greso_alpha": 1.5})
    with pytest.raises(ValueError, match="data.weighting must be one of none, greso"):
        check_recycling_settings({"weighting": "knapsack"})
