"""LightningCLI for ``lit-search-rl fit|validate|test``.

Any LightningModule and LightningDataModule can be named in the config by ``class_path``;
their init arguments, and the Trainer's, are documented in ``--help`` from their docstrings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# Init arguments that name a local file or folder (model names may also be Hub ids).
_PATH_ARGS = {"model": ("model", "retriever"), "data": ("train", "world", "tokenizer")}


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

    def before_instantiate_classes(self) -> None:
        """Name a missing file or model before anything is loaded or built."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        for section, names in _PATH_ARGS.items():
            init = _get(config, f"{section}.init_args")
            for name in names:
                _check_local(_get(init, name), f"{section}.init_args.{name}")
            for split in ("val_sets", "test_sets"):
                for i, eval_set in enumerate(_get(init, split) or []):
                    path = _get(eval_set, "path")
                    if path is not None and not Path(path).exists():
                        raise FileNotFoundError(f"{section}.init_args.{split}[{i}].path: {path} does not exist")


def _get(namespace: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if namespace is None:
            return None
        namespace = namespace.get(key) if hasattr(namespace, "get") else getattr(namespace, key, None)
    return namespace


def _check_local(value: Any, flag: str) -> None:
    """A value that looks like a local path (its parent folder exists, or it starts with ./ / ~) must exist.

    ``Qwen/Qwen3-1.7B`` is a Hub id (no folder ``Qwen`` here) and URLs are left alone.
    """
    if not isinstance(value, str) or "://" in value:
        return
    path = Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.is_dir())
    if looks_local and not path.exists():
        raise FileNotFoundError(f"{flag}: {value} does not exist")
