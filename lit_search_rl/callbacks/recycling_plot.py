"""At the end of fit, a PNG of the pool's statistics over steps, in the log folder and in TensorBoard."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

PANELS: dict[str, tuple[str, ...]] = {
    "groups": ("train/signal_fraction", "train/too_easy_fraction", "train/too_hard_fraction"),
    "effective batch": ("train/effective_batch_size",),
    "recycling": ("train/recycled_fraction", "train/recovery_fraction", "train/drift_fraction"),
    "rollouts per update": ("train/rollouts_per_update",),
    "pool": ("pool/active", "pool/consumed"),
}


class RecyclingPlot(Callback):
    """Collects the pool and group statistics every step and plots them at the end of fit.

    Args:
        filename: name of the PNG written into the trainer's log folder.
    """

    def __init__(self, filename: str = "recycling.png") -> None:
        self.filename = filename
        self.history: dict[str, list[tuple[int, float]]] = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        for tags in PANELS.values():
            for tag in tags:
                if tag in metrics:
                    self.history.setdefault(tag, []).append((batch_idx, float(metrics[tag])))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # log_dir is a collective with several ranks: every rank asks, only rank zero draws.
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        self._draw(trainer, folder)

    @rank_zero_only
    def _draw(self, trainer: Trainer, folder: Path) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")  # no display on training machines
        import matplotlib.pyplot as plt

        panels = [(title, [t for t in tags if t in self.history]) for title, tags in PANELS.items()]
        panels = [(title, tags) for title, tags in panels if tags]
        figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True, squeeze=False)
        for ax, (title, tags) in zip(axes[:, 0], panels, strict=True):
            for tag in tags:
                steps, values = zip(*self.history[tag], strict=True)
                ax.plot(steps, values, label=tag.split("/", 1)[1])
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7, loc="best")
        axes[-1, 0].set_xlabel("step")
        figure.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / self.filename, dpi=100)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure("recycling", figure, global_step=trainer.global_step)
        plt.close(figure)
