"""Pieces the multi-process tests import in their worker processes.

Importing this module registers the ``coin`` reward (1 half of the time, so a random model
still gets signal groups), because a worker started by Lightning's launcher does not run the
test's fixtures.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lightning import Callback, LightningModule, Trainer

from lit_search_rl.distributed import rank_and_world
from lit_search_rl.fsdp import is_sharded
from lit_search_rl.rewards import REWARDS

_coin = random.Random(0)
REWARDS["coin"] = lambda answer, golds: float(_coin.random() < 0.5)


class RankRecorder(Callback):
    """Writes, per rank and step, the pool digest and the rows of each update, as JSON lines.

    Args:
        out: Folder for ``rank<r>.jsonl``.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.rows: list[int] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        original = pl_module.accumulate_gradients

        def recorded(batch):
            self.rows.append(int(batch.input_ids.shape[0]))
            return original(batch)

        pl_module.accumulate_gradients = recorded

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rank, world = rank_and_world()
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"step": batch_idx, "world": world, "pool": trainer.datamodule.sampler.digest(), "rows": self.rows,
                  "global_step": trainer.global_step, "weights": _weights_digest(pl_module),
                  "sharded": is_sharded(pl_module.policy)}  # fmt: skip
        self.rows = []
        with open(self.out / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def _weights_digest(pl_module) -> str:
    """Digest of the full weights (gathered from shards under FSDP: every rank calls it)."""
    from lit_search_rl.distributed import state_digest
    from lit_search_rl.full_weights import iter_full_weights

    return state_digest(dict(iter_full_weights(pl_module.policy)))
