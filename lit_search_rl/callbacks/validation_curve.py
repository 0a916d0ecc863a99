"""``ValidationCurve``: held-out exact match against training steps and trajectories spent.

Every validation during fit (``val_check_interval``) adds a point per validation set; at the end
of fit the curve is written into the log folder as ``validation.png`` and ``validation.csv``, and
added to TensorBoard. Validation on a fixed set of questions every N steps is what shows whether
reinforcement learning is still improving the policy, and at what rollout cost.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only


class ValidationCurve(Callback):
    """Records ``val/<dataset>/<metric>`` after every validation and plots it at the end of fit.

    Args:
        metric: The metric to plot (``em``, ``f1``, ...).
        filename: Stem of the PNG and CSV written into the trainer's log folder.

    The values are read from the module's ``last_evaluation`` summary (``GRPOModule``), which the sanity check
    fills too: with ``trainer.num_sanity_val_steps: -1`` the whole validation set runs before the first step
    and the curve starts at the policy training begins from.
    """

    def __init__(self, metric: str = "em", filename: str = "validation") -> None:
        self.metric, self.filename = metric, filename
        self.rollouts = 0
        self.points: list[dict[str, float]] = []
        """One row per validation: ``step``, ``trajectories`` and the metric per validation set."""
        self._seen: object = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.rollouts += getattr(pl_module, "step_rollouts", 0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        summary = getattr(pl_module, "last_evaluation", None)
        if trainer.state.fn != "fit" or summary is None or summary is self._seen:
            return  # not during fit, or no new evaluation (a validation without questions)
        self._seen = summary
        values = {name: float(row[self.metric]) for name, row in summary.items() if self.metric in row}
        if values:
            self.points.append({"step": float(trainer.global_step), "trajectories": float(self.rollouts), **values})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks
        self._write(trainer, folder)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, folder: Path) -> None:
        if not self.points:
            return
        folder.mkdir(parents=True, exist_ok=True)
        datasets = sorted({k for p in self.points for k in p} - {"step", "trajectories"}, key=lambda k: k == "avg")
        with open(folder / f"{self.filename}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "trajectories", *datasets])
            writer.writeheader()
            writer.writerows(self.points)
        import matplotlib

        matplotlib.use("Agg")  # no display on training machines
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
        for ax, x in zip(axes, ("step", "trajectories"), strict=True):
            for name in datasets:
                points = [(p[x], p[name]) for p in self.points if name in p]
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name,
                        linewidth=2.5 if name == "avg" else 1.2)  # fmt: skip
            ax.set_xlabel("optimizer steps" if x == "step" else "trajectories rolled out")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"validation {self.metric}")
        axes[1].legend(fontsize=8, loc="best")
        figure.tight_layout()
        figure.savefig(folder / f"{self.filename}.png", dpi=100)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure("validation_curve", figure, global_step=trainer.global_step)
        plt.close(figure)

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts": self.rollouts, "points": self.points}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollouts = int(state_dict["rollouts"])
        self.points = list(state_dict["points"])
