"""LightningCLI for ``lit-search-rl fit|validate|test``.

Any LightningModule and LightningDataModule can be named in the config by ``class_path``;
their init arguments, and the Trainer's, are documented in ``--help`` from their docstrings.
"""

from __future__ import annotations

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class SearchRLCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, and an overwritable saved config."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "lit-search-rl"},
            args=args,
            run=run,
        )
