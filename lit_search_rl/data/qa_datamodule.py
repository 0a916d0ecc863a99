"""The plain GRPO data module: an epoch pass over the training questions, reshuffled each epoch.

Each step gets one candidate batch of questions. The query-recycling pool
(``RecyclingDataModule``) builds on the same records.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader, IterableDataset

from lit_search_rl.data.eval_data import EvalDataModule
from lit_search_rl.data.eval_sets import EvalSet
from lit_search_rl.data.qa import QARecord, load_qa


class _EpochDraws(IterableDataset):
    def __init__(self, records: list[QARecord], size: int, seed: int) -> None:
        self.records, self.size, self.seed = records, size, seed

    def __iter__(self) -> Iterator[list[QARecord]]:
        epoch = 0
        while True:  # the trainer's max_steps ends training
            order = list(self.records)
            random.Random(self.seed + epoch).shuffle(order)
            for start in range(0, len(order) - self.size + 1, self.size):
                yield order[start : start + self.size]
            epoch += 1


class QADataModule(EvalDataModule):
    """Candidate batches of training questions for GRPO, an epoch pass at a time, and evaluation sets.

    Args:
        train: FlashRAG JSON-lines file of training questions.
        candidates_per_step: questions drawn per step; unset to take the module's ``oversample * batch_size``.
        seed: seed of the shuffles.
        val_sets: Evaluation sources of validation during fit and of ``validate``.
        test_sets: Evaluation sources of ``test``.
        eval_batch_size: Questions per evaluation batch.
    """

    def __init__(
        self,
        train: str,
        candidates_per_step: int | None = None,
        seed: int = 0,
        val_sets: list[EvalSet] | None = None,
        test_sets: list[EvalSet] | None = None,
        eval_batch_size: int = 32,
    ) -> None:
        super().__init__(val_sets, test_sets, eval_batch_size)
        self.train_path = Path(train)
        self.candidates_per_step = candidates_per_step
        self.seed = seed
        self.records: list[QARecord] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        if not self.train_path.is_file():
            raise FileNotFoundError(f"data.train: {self.train_path} does not exist")
        self.records = load_qa(self.train_path)
        if self.candidates_per_step is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.candidates_per_step = getattr(module, "candidates_per_step", None) or 1
        if len(self.records) < self.candidates_per_step:
            raise ValueError(f"data.train has {len(self.records)} questions, fewer than one step's "
                             f"{self.candidates_per_step}")  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: each item already is one step's list of questions.
        return DataLoader(_EpochDraws(self.records, self.candidates_per_step, self.seed), batch_size=None,
                          collate_fn=lambda x: x)  # fmt: skip
