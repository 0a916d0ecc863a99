"""torchmetrics metrics for answers: exact match and token F1, summed and synced across processes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from lit_search_rl.rewards import exact_match, f1_score


class _AnswerScore(Metric):
    """Mean of a per-answer score; ``update`` takes predictions and their golden answers."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def score(prediction: str | None, golden_answers: Sequence[str]) -> float:
        raise NotImplementedError

    def update(self, predictions: Sequence[str | None], golden_answers: Sequence[Sequence[str]]) -> None:
        if len(predictions) != len(golden_answers):
            raise ValueError(f"{len(predictions)} predictions for {len(golden_answers)} answer lists")
        self.total += sum(self.score(p, g) for p, g in zip(predictions, golden_answers, strict=True))
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class ExactMatch(_AnswerScore):
    """Share of predictions that exactly match a golden answer after SQuAD normalisation."""

    score = staticmethod(exact_match)


class F1(_AnswerScore):
    """Mean token F1 of predictions against their best golden answer."""

    score = staticmethod(f1_score)
