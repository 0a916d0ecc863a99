"""LightningCLI for ``lit-search-rl fit|validate|test``.

Any LightningModule and LightningDataModule can be named in the config by ``class_path``;
their init arguments, and the Trainer's, are documented in ``--help`` from their docstrings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from lit_search_rl.checks import check_eval_rows, check_paths, check_settings, check_sources


class SearchRLCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, and an overwritable saved config."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        _hide_advertising_tips()
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # Errors raise (one line through run_tool) instead of printing the whole usage; --help still shows it.
            parser_kwargs={
                "prog": "lit-search-rl",
                "exit_on_error": False,
                **{command: {"exit_on_error": False} for command in ("fit", "validate", "test")},
            },
            args=args,
            run=run,
        )

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path FILE``; the settings given now win over those stored in it.

        LightningCLI would parse the checkpoint's ``hyper_parameters`` over the config here, so a
        resumed run dialled the checkpoint's retriever and read its paths, whatever the command
        line said. Only the training state comes from the checkpoint; settings that differ are named.
        """
        from lit_search_rl.checkpointing import note, read_checkpoint, settings_differing

        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc") or "://" in str(ckpt_path):
            return
        if Path(ckpt_path).is_dir():  # a sharded (distributed) checkpoint folder: the strategy reads it
            return
        # mmap: the hyperparameters are read without loading every tensor; a truncated file fails here.
        stored = read_checkpoint(ckpt_path, mmap=True).get("hyper_parameters") or {}
        differing = settings_differing(stored, _get(self.config[subcommand], "model.init_args") or {})
        if differing:
            note(f"lit-search-rl {subcommand}: using the given model.{', model.'.join(differing)}, "
                  f"not the value stored in {ckpt_path}")  # fmt: skip

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer, with atomic checkpoint writes and a checkpoint on SIGTERM/SIGINT (``checkpointing``)."""
        from lit_search_rl.checkpointing import install_checkpointing

        return install_checkpointing(super().instantiate_trainer(**kwargs))

    def _run_subcommand(self, subcommand: str) -> None:
        """Resolve ``--ckpt_path last`` (an error when there is none); exit non-zero after a signal's checkpoint."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from lit_search_rl.checkpointing import CheckpointGuard, find_last_checkpoint

        if self.config_init[subcommand].get("ckpt_path") == "last":
            self.config_init[subcommand]["ckpt_path"] = str(find_last_checkpoint(self.trainer))
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            guard = next((cb for cb in self.trainer.callbacks if isinstance(cb, CheckpointGuard)), None)
            if guard is None or guard.exit_status is None:
                raise
            raise SystemExit(guard.exit_status) from None

    def before_instantiate_classes(self) -> None:
        """Name a missing file or model before anything is loaded or built."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        inits = {section: _get(config, f"{section}.init_args") for section in ("model", "data")}
        inits = {section: dict(init.items()) if init else {} for section, init in inits.items()}
        for section, init in inits.items():  # the settings checks of the modules, before the model loads
            check_settings(section, _get(config, f"{section}.class_path"), init)
        for section, init in inits.items():
            check_sources(section, init)
            check_paths(section, init, self.subcommand)
        check_eval_rows(_get(config, "data.init_args"), self.subcommand)


class _NoAdvertisingTips(logging.Filter):
    """Drops Lightning's tips that advertise its cloud packages (litlogger, litmodels): they are not this tool's."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Tip:" in message and ("litlogger" in message or "litmodels" in message))


def _hide_advertising_tips() -> None:
    """Filter Lightning's rank-zero log, where the tips are printed; Lightning has no setting to turn them off."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisingTips) for f in log.filters):
        log.addFilter(_NoAdvertisingTips())


def _get(namespace: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if namespace is None:
            return None
        namespace = namespace.get(key) if hasattr(namespace, "get") else getattr(namespace, key, None)
    return namespace
