"""Evaluation data for ``validate`` and ``test``: named QA datasets, served in batches of questions.

``EvalDataModule`` holds the evaluation sets; the training data module (``RecyclingDataModule``)
extends it, so one config trains and evaluates. Each batch is
``(dataset name, questions)``. Every rank gets every batch: the module shards the rollouts
of a batch over ranks and gathers them, as in training.
"""

from __future__ import annotations

from collections.abc import Iterator

from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lit_search_rl.data.eval_sets import EvalSet, load_eval_sets
from lit_search_rl.data.qa import QARecord

EvalBatch = tuple[str, list[QARecord]]


class _EvalBatches(IterableDataset):
    def __init__(self, datasets: dict[str, list[QARecord]], batch_size: int) -> None:
        self.datasets, self.batch_size = datasets, batch_size

    def __iter__(self) -> Iterator[EvalBatch]:
        for name, records in self.datasets.items():
            for start in range(0, len(records), self.batch_size):
                yield name, records[start : start + self.batch_size]

    def __len__(self) -> int:
        return sum(-(-len(r) // self.batch_size) for r in self.datasets.values())


class EvalDataModule(LightningDataModule):
    """Evaluation datasets for ``lit-search-rl validate`` / ``test`` and for validation during fit.

    Args:
        val_sets: Sources of ``validate`` and of validation during fit (FlashRAG JSON lines, Search-R1 parquet,
            hub names); see ``EvalSet``.
        test_sets: Sources of ``test``.
        eval_batch_size: Questions per evaluation batch (one batched rollout).
    """

    def __init__(
        self, val_sets: list[EvalSet] | None = None, test_sets: list[EvalSet] | None = None, eval_batch_size: int = 32
    ) -> None:
        super().__init__()
        if eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be at least 1 (got {eval_batch_size})")
        self.sets = {"val": list(val_sets or []), "test": list(test_sets or [])}
        self.eval_batch_size = eval_batch_size
        self.eval_datasets: dict[str, dict[str, list[QARecord]]] = {}

    def setup(self, stage: str) -> None:
        # Load at set-up, so a missing file stops the run before any work starts.
        for split in {"fit": ["val"], "validate": ["val"], "test": ["test"]}.get(stage, []):
            if split not in self.eval_datasets and self.sets[split]:
                self.eval_datasets[split] = load_eval_sets(self.sets[split])

    def _eval_loader(self, split: str) -> DataLoader | list:
        if not self.sets[split]:
            fitting = self.trainer is not None and self.trainer.state.fn == "fit"
            if fitting:
                return []  # no validation during fit
            raise ValueError(f"data.{split}_sets is empty: no {split} datasets to evaluate")
        self.setup("test" if split == "test" else "validate")
        # batch_size=None: each item already is one (name, questions) batch.
        return DataLoader(_EvalBatches(self.eval_datasets[split], self.eval_batch_size), batch_size=None)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")
