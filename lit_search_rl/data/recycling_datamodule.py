"""The recycling DataModule: owns the query pool and rebuilds every step's candidates from it.

The data loader yields only step numbers. The draw itself happens inside the training step
(``sampling_step``), after the previous step's outcomes reached the pool, so Lightning's
prefetching of the next batch can never serve a stale draw. The pool is the data module's
state and lands in every Lightning checkpoint; a resumed run draws exactly what the
uninterrupted run would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_search_rl.checks import check_recycling_settings
from lit_search_rl.data.eval_data import EvalDataModule
from lit_search_rl.data.eval_sets import EvalSet
from lit_search_rl.data.pool import Outcome, QueryPool
from lit_search_rl.data.qa import QARecord, load_qa
from lit_search_rl.data.recycling import StepResult, sampling_step
from lit_search_rl.data.strategies import Strategy, make_strategy
from lit_search_rl.distributed import check_identical, state_digest


class _Steps(IterableDataset):
    def __iter__(self) -> Iterator[int]:
        return itertools.count()


class RecyclingDataModule(EvalDataModule):
    """Training questions in a weighted pool, drawn by a sampling strategy, and evaluation sets.

    Args:
        train: FlashRAG JSON-lines file of training questions (unique ids).
        strategy: ``recycle``, ``grpo``, ``dapo`` or ``bounded_dapo``.
        recycled_weight: Weight of drawn but unused queries under ``recycle``; below 1 is soft recycling.
        max_rounds: Rounds of B candidates per step under ``dapo``.
        exhaustion: When too few queries are active: ``reset`` (new epoch) or ``stop`` (end training with a message).
        batch_size: Signal groups per update (B); unset to take the module's ``batch_size``.
        oversample: Candidates per round as a multiple of B (k); unset to take the module's ``oversample``.
        seed: Seed of the draws; the same on every rank, so every rank holds the same pool.
        check_every: Steps between checks that every rank's pool is still identical (0: never; one rank: never).
        val_sets: Evaluation sources of validation during fit and of ``validate``.
        test_sets: Evaluation sources of ``test``.
        eval_batch_size: Questions per evaluation batch.
    """

    def __init__(
        self,
        train: str,
        strategy: Literal["recycle", "grpo", "dapo", "bounded_dapo"] = "recycle",
        recycled_weight: float = 1.0,
        max_rounds: int = 4,
        exhaustion: Literal["reset", "stop"] = "reset",
        batch_size: int | None = None,
        oversample: int | None = None,
        seed: int = 0,
        check_every: int = 1,
        val_sets: list[EvalSet] | None = None,
        test_sets: list[EvalSet] | None = None,
        eval_batch_size: int = 32,
    ) -> None:
        # Checked now, when the config is read, not in setup after the model has loaded.
        check_recycling_settings({"strategy": strategy, "recycled_weight": recycled_weight, "max_rounds": max_rounds,
                                  "exhaustion": exhaustion, "batch_size": batch_size, "oversample": oversample,
                                  "check_every": check_every, "eval_batch_size": eval_batch_size})  # fmt: skip
        super().__init__(val_sets, test_sets, eval_batch_size)
        self.train_path = Path(train)
        self.strategy_name, self.recycled_weight, self.max_rounds = strategy, recycled_weight, max_rounds
        self.exhaustion, self.seed, self.check_every = exhaustion, seed, check_every
        self.batch_size, self.oversample = batch_size, oversample
        self.records: list[QARecord] = []
        self.pool: QueryPool | None = None
        self.strategy: Strategy | None = None
        self._pending_state: dict[str, Any] | None = None
        self._steps = 0

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.pool is not None or stage != "fit":
            return
        if not self.train_path.is_file():
            raise FileNotFoundError(f"data.train: {self.train_path} does not exist")
        self.records = load_qa(self.train_path)
        module = self.trainer.lightning_module if self.trainer is not None else None
        hparams = getattr(module, "hparams", {})
        batch = self.batch_size or hparams.get("batch_size", 1)
        oversample = self.oversample or hparams.get("oversample", 1)
        self.strategy = make_strategy(self.strategy_name, batch_size=batch, oversample=oversample,
                                      max_rounds=self.max_rounds, recycled_weight=self.recycled_weight)  # fmt: skip
        if len(self.records) < self.strategy.candidates():
            raise ValueError(f"data.train has {len(self.records)} questions, fewer than one draw of "
                             f"{self.strategy.candidates()}")  # fmt: skip
        self.pool = QueryPool([r.id for r in self.records], seed=self.seed, exhaustion=self.exhaustion)
        if self._pending_state is not None:
            self.pool.load_state_dict(self._pending_state)
            self._pending_state = None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def sampling_step(self, outcomes_of: Callable[[list[QARecord], np.ndarray], Sequence[Outcome]]) -> StepResult:
        """Draw from the current pool, get each drawn question's outcome, fill the effective batch, report.

        With several ranks, ``outcomes_of`` must return every drawn question's outcome on every
        rank (the GRPO module gathers them), so the pools stay identical; this is checked every
        ``check_every`` steps.
        """
        result = sampling_step(self.pool, self.strategy, lambda idx: outcomes_of([self.records[i] for i in idx], idx))
        self._steps += 1
        if self.check_every and self._steps % self.check_every == 0:
            check_identical("the query pool", self.pool_digest())
        return result

    def pool_digest(self) -> str:
        """A hash of the pool's mutable state (weights, history, counters, generator)."""
        return state_digest({k: v for k, v in self.pool.state_dict().items() if k != "ids"})

    def state_dict(self) -> dict[str, Any]:
        # Arrays go into the checkpoint as tensors: Lightning resumes with torch.load(weights_only=True),
        # which refuses numpy arrays.
        if self.pool is None:
            return {}
        return {"pool": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                         for k, v in self.pool.state_dict().items()}}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "pool" not in state_dict:
            return
        state = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state_dict["pool"].items()}
        if self.pool is None:
            self._pending_state = state  # applied in setup, once the pool exists
        else:
            self.pool.load_state_dict(state)
