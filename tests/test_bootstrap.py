"""Paired bootstrap intervals of a gain between two evaluations of the same questions."""

from __future__ import annotations

import pytest

from lit_search_rl.evaluation.bootstrap import paired_bootstrap


def test_the_interval_brackets_the_mean_and_excludes_zero_for_a_clear_gain() -> None:
    before = {f"q{i}": 0.0 for i in range(100)}
    after = {f"q{i}": float(i < 40) for i in range(100)}  # 40 of 100 questions flip to right
    gain = paired_bootstrap(before, after)
    assert gain.mean == pytest.approx(0.40) and gain.n == 100
    assert 0.25 < gain.low < 0.40 < gain.high < 0.55


def test_pairing_removes_the_spread_of_question_difficulty() -> None:
    # Half the questions are always right, half never: the same answers before and after give a zero-width
    # interval, which an unpaired comparison (two independent resamples) would not.
    scores = {f"q{i}": float(i % 2) for i in range(50)}
    gain = paired_bootstrap(scores, dict(scores))
    assert gain.mean == gain.low == gain.high == 0.0


def test_only_questions_scored_by_both_are_paired_and_none_in_common_is_an_error() -> None:
    gain = paired_bootstrap({"a": 0.0, "b": 1.0}, {"b": 1.0, "c": 0.0})
    assert gain.n == 1 and gain.mean == 0.0
    with pytest.raises(ValueError, match="share no question"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap({"a": 1.0}, {"a": 1.0}, level=1.5)


def test_the_same_seed_gives_the_same_interval() -> None:
    before = {f"q{i}": float(i % 3 == 0) for i in range(60)}
    after = {f"q{i}": float(i % 2 == 0) for i in range(60)}
    assert paired_bootstrap(before, after, seed=3) == paired_bootstrap(before, after, seed=3)
