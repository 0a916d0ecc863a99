"""Rewards and answer metrics: SQuAD normalisation, EM / F1 / cover-EM, the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_search_rl.rewards import (
    REWARDS,
    RewardError,
    cover_exact_match,
    exact_match,
    extract_answer,
    f1_score,
    get_reward,
    normalize_answer,
    register_reward,
    score_answer,
)


def test_normalisation_is_squad() -> None:
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"


def test_scores() -> None:
    assert exact_match("the Beatles", ["Beatles", "The Fab Four"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match(None, ["x"]) == 0.0
    assert cover_exact_match("It was the Beatles band", ["Beatles"]) == 1.0
    assert cover_exact_match("Beatlesque", ["Beatles"]) == 0.0
    assert f1_score("new york city", ["New York"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_score("boston", ["New York", "Boston"]) == 1.0
    assert f1_score("", ["x"]) == 0.0


def test_answer_extraction_uses_only_the_models_final_answer() -> None:
    assert extract_answer("<think> <answer> no </answer> </think> <answer> yes </answer>") == "yes"
    assert extract_answer("<answer> unterminated") is None


def test_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_reward("em") is exact_match
    with pytest.raises(ValueError, match="unknown reward 'bleu'; choose one of cover_em, em, f1"):
        get_reward("bleu")
    monkeypatch.setattr("lit_search_rl.rewards.REWARDS", dict(REWARDS))  # keep the global registry clean
    register_reward("half_em", lambda answer, golds: exact_match(answer, golds) * 0.5)
    assert get_reward("half_em")("a", ["a"]) == 0.5


def test_reward_by_import_path() -> None:
    assert get_reward("lit_search_rl.rewards:f1_score") is f1_score
    with pytest.raises(ValueError, match="reward 'no_such_module:f' cannot be imported: No module named"):
        get_reward("no_such_module:f")
    with pytest.raises(ValueError, match="reward 'lit_search_rl.rewards:nope' cannot be imported"):
        get_reward("lit_search_rl.rewards:nope")
    with pytest.raises(ValueError, match="reward 'lit_search_rl.rewards:REWARDS' is not a function"):
        get_reward("lit_search_rl.rewards:REWARDS")


def raising_reward(answer: str | None, golden_answers: list[str]) -> float:
    """A user's reward with a bug: it raises on every answer."""
    raise ValueError("golden answers must not be empty")


def none_reward(answer: str | None, golden_answers: list[str]) -> float:
    """A user's reward that forgot its return statement."""
    return None  # type: ignore[return-value]


def test_reward_failures_name_the_reward_and_the_question() -> None:
    name = "tests.test_rewards:raising_reward"
    with pytest.raises(RewardError, match=f"^reward {name} raised ValueError on question q17: golden answers must not"):
        score_answer(raising_reward, name, "Paris", ["paris"], "q17")
    with pytest.raises(RewardError, match=r"^reward my:fn returned None on question q17 \(expected a number\)$"):
        score_answer(none_reward, "my:fn", "Paris", ["paris"], "q17")
    with pytest.raises(RewardError, match=r"^reward my:fn returned 'yes' on question q3 \(expected a number\)$"):
        score_answer(lambda a, g: "yes", "my:fn", "Paris", ["paris"], "q3")
    assert issubclass(RewardError, ValueError)  # the command line prints it as one line


def test_a_non_finite_reward_is_an_error_or_an_explicit_zero() -> None:
    nan = lambda a, g: float("nan")  # noqa: E731
    with pytest.raises(RewardError, match=r"^reward my:fn returned nan on question q4 for the answer 'Paris'"):
        score_answer(nan, "my:fn", "Paris", ["paris"], "q4")
    with pytest.raises(RewardError, match="returned inf on question q4 for no answer"):
        score_answer(lambda a, g: math.inf, "my:fn", None, ["paris"], "q4")
    assert score_answer(nan, "my:fn", "Paris", ["paris"], "q4", invalid="zero") == (0.0, True)
    assert score_answer(lambda a, g: -math.inf, "my:fn", "x", ["x"], "q4", invalid="zero") == (0.0, True)
    # Any real number is fine, numpy's and tensors' included.
    assert score_answer(lambda a, g: np.float32(0.5), "my:fn", "x", ["x"], "q4") == (0.5, False)
    assert score_answer(lambda a, g: torch.tensor(1.0), "my:fn", "x", ["x"], "q4") == (1.0, False)
    assert score_answer(exact_match, "em", "Paris", ["paris"], "q4") == (1.0, False)
