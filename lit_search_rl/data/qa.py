"""Question records for RL: FlashRAG JSON lines in, one candidate batch of questions per step out.

This is the plain data module (an epoch pass over the questions, reshuffled each epoch). The
query-recycling pool builds on the same records.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lit_search_rl.io import read_jsonl


@dataclass(frozen=True)
class QARecord:
    """One question: ``id``, ``question``, ``golden_answers`` and any extra fields (``family``, ``hops``)."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    extra: tuple[tuple[str, object], ...] = ()


def load_qa(path: Path) -> list[QARecord]:
    """FlashRAG rows of a JSON-lines file; a row without a question or answers is an error naming file and row."""
    records = []
    for number, row in enumerate(read_jsonl(path), start=1):
        question, answers = row.get("question"), row.get("golden_answers")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}: row {number} has no 'question'")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path}: row {number} has no 'golden_answers' list of strings")
        extra = tuple(sorted((k, v) for k, v in row.items() if k not in ("id", "question", "golden_answers")))
        records.append(QARecord(str(row.get("id", number - 1)), question, tuple(answers), extra))
    return records


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


class QADataModule(LightningDataModule):
    """Candidate batches of training questions for GRPO, an epoch pass at a time.

    Args:
        train: FlashRAG JSON-lines file of training questions.
        candidates_per_step: questions drawn per step; unset to take the module's ``oversample * batch_size``.
        seed: seed of the shuffles.
    """

    def __init__(self, train: str, candidates_per_step: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.train_path = Path(train)
        self.candidates_per_step = candidates_per_step
        self.seed = seed
        self.records: list[QARecord] = []

    def setup(self, stage: str) -> None:
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
