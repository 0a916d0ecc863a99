"""Rewards and answer metrics: SQuAD normalisation, EM / F1 / cover-EM, the registry, torchmetrics state."""

from __future__ import annotations

import pytest
import torch

from lit_search_rl.metrics import F1, ExactMatch
from lit_search_rl.rewards import (
    REWARDS,
    cover_exact_match,
    exact_match,
    extract_answer,
    f1_score,
    get_reward,
    normalize_answer,
    register_reward,
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


def test_metrics_accumulate_and_reset() -> None:
    em, f1 = ExactMatch(), F1()
    em.update(["Paris", "Rome", None], [["paris"], ["Milan"], ["x"]])
    f1.update(["new york city"], [["new york"]])
    assert em.compute().item() == pytest.approx(1 / 3)
    assert f1.compute().item() == pytest.approx(0.8)
    em.reset()
    assert em.count.item() == 0
    with pytest.raises(ValueError):
        em.update(["a"], [])
    assert isinstance(em.total, torch.Tensor)
