"""The training DataModule of GRPO: owns the query pool and the ``QuerySampler`` that draws every step.

Every strategy goes through it: ``grpo`` is a plain epoch pass, ``recycle`` returns unused
queries to the pool. The data loader yields only step numbers. The draw itself happens inside
the training step (``sampler.step``), after the previous step's outcomes reached the pool, so
Lightning's prefetching of the next batch can never serve a stale draw. The pool is the data
module's state and lands in every Lightning checkpoint; a resumed run draws exactly what the
uninterrupted run would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lit_search_rl.checks import check_recycling_settings
from lit_search_rl.data.allocation import make_allocator
from lit_search_rl.data.eval_data import EvalDataModule
from lit_search_rl.data.eval_sets import EvalSet
from lit_search_rl.data.pool import QueryPool
from lit_search_rl.data.qa import QARecord, load_qa
from lit_search_rl.data.query_sampler import QuerySampler
from lit_search_rl.data.strategies import check_options, make_strategy
from lit_search_rl.data.weighting import make_weighting


class _Steps(IterableDataset):
    def __iter__(self) -> Iterator[int]:
        return itertools.count()


class RecyclingDataModule(EvalDataModule):
    """Training questions in a weighted pool, drawn by a query strategy, and evaluation sets.

    Args:
        train: FlashRAG JSON-lines file of training questions, or a list of such files pooled together (ids
            unique over all of them).
        strategy: ``recycle``, ``grpo`` (an epoch pass: B drawn, all consumed), ``dapo`` or ``bounded_dapo``.
        recycled_weight: Weight of drawn but unused queries under ``recycle`` (1 when unset); below 1 is soft
            recycling. Set with another strategy, it is an error.
        max_rounds: Rounds of B candidates per step under ``dapo`` (4 when unset); an error with another strategy.
        exhaustion: When too few queries are active: ``reset`` (new epoch) or ``stop`` (end training with a message).
        weighting: How each query's outcome history scales its draw weight after every step: ``none`` or ``greso``
            (GRESO: queries on a streak of all-correct or all-wrong groups are drawn less, by a controller that
            aims at a share ``greso_alpha`` of zero-variance groups; ``lit_search_rl.data.weighting``). Composes
            with every strategy.
        greso_alpha: The zero-variance share GRESO aims at (0.25 when unset); an error with another weighting.
        allocator: Rollouts per drawn question: ``fixed`` (K each, GRPO's groups) or ``knapsack`` (Knapsack RL: K for
            a question never rolled out, 2 for one last solved always or never, the rest of the round's budget where
            it most raises the chance of a signal group; ``lit_search_rl.data.allocation``). Composes with every
            strategy.
        rollout_budget: Trajectories per round under ``knapsack`` (K per candidate when unset: the same budget as
            ``fixed``); an error with ``fixed``.
        batch_size: Signal groups per update (B). The GRPO module's ``model.batch_size`` owns it: leave this
            unset (a different value is an error); set it only to use the data module without a GRPO module.
        oversample: Candidates per round as a multiple of B (k); owned by ``model.oversample`` like B.
        group_size: Rollouts per question (K); owned by ``model.group_size`` like B.
        seed: Seed of the draws; the same on every rank, so every rank holds the same pool.
        check_every: Steps between checks that every rank's pool is still identical (0: never; one rank: never).
        val_sets: Evaluation sources of validation during fit and of ``validate``.
        test_sets: Evaluation sources of ``test``.
        eval_batch_size: Questions per evaluation batch.
    """

    def __init__(
        self,
        train: str | list[str],
        strategy: Literal["recycle", "grpo", "dapo", "bounded_dapo"] = "recycle",
        recycled_weight: float | None = None,
        max_rounds: int | None = None,
        exhaustion: Literal["reset", "stop"] = "reset",
        weighting: Literal["none", "greso"] = "none",
        greso_alpha: float | None = None,
        allocator: Literal["fixed", "knapsack"] = "fixed",
        rollout_budget: int | None = None,
        batch_size: int | None = None,
        oversample: int | None = None,
        group_size: int | None = None,
        seed: int = 0,
        check_every: int = 1,
        val_sets: list[EvalSet] | None = None,
        test_sets: list[EvalSet] | None = None,
        eval_batch_size: int = 32,
    ) -> None:
        # Checked now, when the config is read, not in setup after the model has loaded.
        check_recycling_settings({"strategy": strategy, "recycled_weight": recycled_weight, "max_rounds": max_rounds,
                                  "exhaustion": exhaustion, "batch_size": batch_size, "oversample": oversample,
                                  "check_every": check_every, "eval_batch_size": eval_batch_size,
                                  "weighting": weighting, "greso_alpha": greso_alpha, "allocator": allocator,
                                  "rollout_budget": rollout_budget, "group_size": group_size})  # fmt: skip
        super().__init__(val_sets, test_sets, eval_batch_size)
        self.train_paths = [Path(train)] if isinstance(train, str) else [Path(path) for path in train]
        self.strategy_name, self.recycled_weight, self.max_rounds = strategy, recycled_weight, max_rounds
        self.exhaustion, self.seed, self.check_every = exhaustion, seed, check_every
        self.weighting_name, self.greso_alpha = weighting, greso_alpha
        self.allocator_name, self.rollout_budget, self.group_size = allocator, rollout_budget, group_size
        self.batch_size, self.oversample = batch_size, oversample
        self.records: list[QARecord] = []
        self.sampler: QuerySampler | None = None  # built in setup("fit")
        self._pending_state: dict[str, Any] | None = None

    @property
    def pool(self) -> QueryPool | None:
        return None if self.sampler is None else self.sampler.pool

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.sampler is not None or stage != "fit":
            return
        if not self.train_paths:
            raise ValueError("data.train: no file given")
        missing = [str(path) for path in self.train_paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"data.train: {', '.join(missing)} does not exist")
        self.records = [record for path in self.train_paths for record in load_qa(path)]
        batch, oversample, group = self._sizes()
        check_options(self.strategy_name, "data.", max_rounds=self.max_rounds, recycled_weight=self.recycled_weight)
        check_options(self.strategy_name, "model.", oversample=oversample)
        strategy = make_strategy(self.strategy_name, batch, oversample=oversample, max_rounds=self.max_rounds,
                                 recycled_weight=self.recycled_weight)  # fmt: skip
        if len(self.records) < strategy.candidates():
            raise ValueError(f"data.train has {len(self.records)} questions, fewer than one draw of "
                             f"{strategy.candidates()}")  # fmt: skip
        pool = QueryPool([r.id for r in self.records], seed=self.seed, exhaustion=self.exhaustion)
        weighting = make_weighting(self.weighting_name,
                                   **({"alpha": self.greso_alpha} if self.greso_alpha is not None else {}))  # fmt: skip
        if self._pending_state is not None:
            pool.load_state_dict(self._pending_state["pool"])
            weighting.load_state_dict(self._pending_state.get("weighting", {}))
            self._pending_state = None
        allocator = make_allocator(self.allocator_name, group, self.rollout_budget)
        self.sampler = QuerySampler(self.records, strategy, pool, self.check_every, weighting, allocator)

    def _sizes(self) -> tuple[int, int, int]:
        """B, k and K: the GRPO module's (``model.batch_size``, ``model.oversample``, ``model.group_size``), which
        own them.

        The data module's own values serve only without such a module, and must agree with it.
        """
        module = self.trainer.lightning_module if self.trainer is not None else None
        hparams = getattr(module, "hparams", {})
        sizes = []
        defaults = {"batch_size": 1, "oversample": 1, "group_size": 4}
        for name, own in (("batch_size", self.batch_size), ("oversample", self.oversample),
                          ("group_size", self.group_size)):  # fmt: skip
            owner = hparams.get(name)
            if owner is not None and own is not None and own != owner:
                raise ValueError(f"data.{name} ({own}) disagrees with model.{name} ({owner}): set it once, as "
                                 f"model.{name}")  # fmt: skip
            sizes.append(owner if owner is not None else own if own is not None else defaults[name])
        return sizes[0], sizes[1], sizes[2]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def state_dict(self) -> dict[str, Any]:
        # Arrays go into the checkpoint as tensors: Lightning resumes with torch.load(weights_only=True),
        # which refuses numpy arrays.
        if self.sampler is None:
            return {}
        return {"pool": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                         for k, v in self.pool.state_dict().items()},
                "weighting": self.sampler.weighting.state_dict()}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "pool" not in state_dict:
            return
        pool = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state_dict["pool"].items()}
        state = {"pool": pool, "weighting": state_dict.get("weighting", {})}
        if self.sampler is None:
            self._pending_state = state  # applied in setup, once the pool exists
        else:
            self.sampler.pool.load_state_dict(pool)
            self.sampler.weighting.load_state_dict(state["weighting"])
