"""Answer extraction, normalisation and the outcome rewards, chosen by name from a registry.

The normalisation is SQuAD's (lowercase, punctuation removed, articles a/an/the dropped,
whitespace collapsed), as FlashRAG and Search-R1 score. A trajectory without an answer gets 0.
``score_answer`` calls any reward, a user's own included, and turns its failures into one-line
errors that name the reward and the question.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

from lit_search_rl.rollout.actions import extract_answer

__all__ = [
    "INVALID_REWARDS",
    "REWARDS",
    "RewardError",
    "cover_exact_match",
    "exact_match",
    "extract_answer",
    "f1_score",
    "get_reward",
    "normalize_answer",
    "register_reward",
    "score_answer",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised golden answer."""
    if prediction is None:
        return 0.0
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golden_answers))


def cover_exact_match(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """1.0 when a normalised golden answer appears, as whole words, in the normalised prediction."""
    if prediction is None:
        return 0.0
    p = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in p for g in golden_answers if normalize_answer(g)))


def f1_score(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """Token F1 between the normalised prediction and the best golden answer."""
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golden_answers:
        expected = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common == 0:
            continue
        precision, recall = common / len(predicted), common / len(expected)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


RewardFn = Callable[[str | None, Sequence[str]], float]
REWARDS: dict[str, RewardFn] = {"em": exact_match, "f1": f1_score, "cover_em": cover_exact_match}


def register_reward(name: str, fn: RewardFn) -> None:
    """Make ``fn(answer, golden_answers) -> float`` available to configs as ``reward: name``."""
    REWARDS[name] = fn


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``, or a function given by import path as ``module:function``.

    The import path lets a config use a reward of the user's own without code that registers it
    first (the training command may run in a fresh process). Errors name the reward and the choices.
    """
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(sorted(REWARDS))} "
                         "or give a function as module:function")  # fmt: skip
    module_name, _, attribute = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward {name!r} cannot be imported: {error}") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not a function of (answer, golden_answers)")
    return fn


InvalidReward = Literal["error", "zero"]
INVALID_REWARDS: tuple[str, ...] = get_args(InvalidReward)


class RewardError(ValueError):
    """A reward failed on a question, or returned no finite number. A ValueError, so the CLI prints one line."""


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def score_answer(
    fn: RewardFn,
    name: str,
    answer: str | None,
    golden_answers: Sequence[str],
    question_id: str,
    invalid: InvalidReward = "error",
) -> tuple[float, bool]:
    """``fn(answer, golden_answers)`` as a float, and whether it was an invalid (non-finite) reward.

    Args:
        fn: the reward function.
        name: the reward as the config names it (``em``, ``my_module:my_reward``), for messages.
        answer: the trajectory's extracted answer (None: it gave none).
        golden_answers: the question's golden answers.
        question_id: the question's id, for messages.
        invalid: what a NaN or infinite reward does: ``error`` raises, ``zero`` scores it 0 (and
            says so in the flag, for counting). A NaN would otherwise poison the group's advantages.

    Raises:
        RewardError: naming the reward and the question, when the function raises, returns
            something that is not a number, or (with ``invalid: error``) a non-finite one.
    """
    try:
        value = fn(answer, golden_answers)
    except Exception as error:  # the user's code: any bug in it is reported as the reward's
        raise RewardError(f"reward {name} raised {type(error).__name__} on question {question_id}: {error}") from error
    # numpy and 0-d torch tensors convert with float(); strings and None are no numbers.
    if not isinstance(value, numbers.Real) and (isinstance(value, str | bytes) or not hasattr(value, "__float__")):
        raise RewardError(f"reward {name} returned {_shown(value)} on question {question_id} (expected a number)")
    try:
        reward = float(value)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. a tensor of many elements
        raise RewardError(f"reward {name} returned {_shown(value)} on question {question_id} "
                          f"(expected a number): {error}") from None  # fmt: skip
    if math.isfinite(reward):
        return reward, False
    if invalid == "zero":
        return 0.0, True
    given = "no answer" if answer is None else f"the answer {_shown(answer)}"
    raise RewardError(f"reward {name} returned {reward} on question {question_id} for {given} (expected a finite "
                      "number); set model.invalid_reward: zero to score such answers 0")  # fmt: skip


def score_groups(
    fn: RewardFn,
    name: str,
    groups: Sequence[Sequence[Any]],
    questions: Sequence[Any],
    invalid: InvalidReward = "error",
) -> tuple[list[list[float]], int]:
    """The reward of each trajectory's ``answer`` against its question's ``golden_answers``, grouped like
    ``groups``, and how many were invalid rewards scored 0 (see ``score_answer``)."""
    rewards, count = [], 0
    for group, question in zip(groups, questions, strict=True):
        row = []
        for trajectory in group:
            value, was_invalid = score_answer(fn, name, trajectory.answer, question.golden_answers, question.id,
                                              invalid)  # fmt: skip
            count += was_invalid
            row.append(value)
        rewards.append(row)
    return rewards, count
