"""``RolloutBudget``: stop training once a number of trajectories has been rolled out.

Strategies differ in how many trajectories a step costs (GRPO rolls out B*K, Bounded-DAPO and
recycling k*B*K, DAPO as many rounds as it takes), so comparing them at equal steps is unfair;
at an equal rollout budget it is not. The count is logged as ``train/rollouts_total`` (the x-axis
for "EM against rollouts consumed") and kept in checkpoints, so a resumed run spends only the rest.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class RolloutBudget(Callback):
    """Count training trajectories and stop at ``max_rollouts``.

    Args:
        max_rollouts: Trajectories (questions x group size, over all ranks) after which training stops;
            the step that crosses it finishes. Unset only counts.
    """

    def __init__(self, max_rollouts: int | None = None) -> None:
        if max_rollouts is not None and max_rollouts < 1:
            raise ValueError(f"RolloutBudget.max_rollouts must be at least 1 (got {max_rollouts})")
        self.max_rollouts = max_rollouts
        self.total = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.total += getattr(pl_module, "step_rollouts", 0)
        pl_module.log("train/rollouts_total", float(self.total))
        if self.max_rollouts is not None and self.total >= self.max_rollouts:
            rank_zero_info(f"stopping: {self.total} trajectories rolled out (budget {self.max_rollouts})")
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = int(state_dict["total"])
