"""``QADataModule``: the training data module with the plain GRPO strategy, kept for existing configs.

It is ``RecyclingDataModule`` with ``strategy: grpo`` by default (an epoch pass: B questions per
step, every drawn one consumed), so GRPO has one way to get its questions: the data module's
``QuerySampler``.
"""

from __future__ import annotations

from typing import Literal

from lit_search_rl.data.eval_sets import EvalSet
from lit_search_rl.data.recycling_datamodule import RecyclingDataModule


class QADataModule(RecyclingDataModule):
    """Training questions drawn by the ``grpo`` strategy (an epoch pass), and evaluation sets.

    Args:
        train: FlashRAG JSON-lines file of training questions (unique ids).
        strategy: ``grpo`` by default; any strategy of ``RecyclingDataModule``.
        seed: Seed of the draws.
        candidates_per_step: Removed: a step draws ``model.batch_size`` questions under ``grpo``, or
            ``model.oversample * model.batch_size`` under ``bounded_dapo`` (what this option used to do).
        val_sets: Evaluation sources of validation during fit and of ``validate``.
        test_sets: Evaluation sources of ``test``.
        eval_batch_size: Questions per evaluation batch.
    """

    def __init__(
        self,
        train: str,
        strategy: Literal["recycle", "grpo", "dapo", "bounded_dapo"] = "grpo",
        seed: int = 0,
        candidates_per_step: int | None = None,
        val_sets: list[EvalSet] | None = None,
        test_sets: list[EvalSet] | None = None,
        eval_batch_size: int = 32,
    ) -> None:
        if candidates_per_step is not None:
            raise ValueError("data.candidates_per_step was removed: a step draws model.batch_size questions "
                             "under data.strategy grpo, or model.oversample * model.batch_size under "
                             "bounded_dapo")  # fmt: skip
        super().__init__(train, strategy=strategy, seed=seed, val_sets=val_sets, test_sets=test_sets,
                         eval_batch_size=eval_batch_size)  # fmt: skip
