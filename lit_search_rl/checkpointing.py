"""Checkpoints that survive kills, full disks and signals, and exports that match them.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file beside its final path and renames
  it into place only when complete, so a failed write (disk full, kill) leaves the previous one intact;
  the policy export of that checkpoint is written after the rename.
- ``CheckpointGuard`` saves a checkpoint (and the export) when the run gets SIGTERM or SIGINT, after
  the current step, and clears temporary files of killed writes when a run starts.
- ``find_last_checkpoint`` and ``read_checkpoint`` resolve ``--ckpt_path last`` and read a checkpoint
  with one-line errors.

``lit-search-rl fit`` installs both (``install_checkpointing``); a Trainer of your own can too.
"""

from __future__ import annotations

import glob
import os
import pickle
import signal
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

PARTIAL = ".partial"
"""Suffix of a checkpoint being written: ``.<name>.<pid>.partial`` beside ``<name>``."""
INTERRUPTED = "interrupted.ckpt"
"""File name of the checkpoint saved on SIGTERM or SIGINT."""
"""Exit status after a signal stopped the run (128 + the signal number, as shells report it)."""

# What torch.load raises for a file that is not a whole checkpoint (truncated, empty, or another format).
_INCOMPLETE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError)


def partial_path(path: Path, pid: int | None = None) -> Path:
    """The temporary file a checkpoint is written to before it is renamed to ``path``."""
    return path.parent / f".{path.name}.{os.getpid() if pid is None else pid}{PARTIAL}"


def remove_partials(folder: Path) -> list[Path]:
    """Delete temporary files that checkpoint writes killed half-way left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f".*.ckpt.*{PARTIAL}"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def read_checkpoint(path: str | Path, **load_kwargs: Any) -> dict[str, Any]:
    """``torch.load`` of a checkpoint file; a missing or incomplete file is one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, **{"map_location": "cpu", "weights_only": True, **load_kwargs})
    except _INCOMPLETE as e:
        # The first sentence of torch's reason (its miniz message goes on for four more).
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a complete checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a complete checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a half-written checkpoint at the final path.

    The checkpoint is written to ``.<name>.<pid>.partial`` in the same folder (so the final rename never
    crosses file systems), synced to disk and renamed over the old file. Work queued with ``defer``
    (the policy export) runs after that rename, so an export is never ahead of its checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self._deferred: list[Callable[[Path], None]] = []

    def defer(self, work: Callable[[Path], None]) -> None:
        """Run ``work(path)`` once the next checkpoint file is complete at ``path``; dropped if the save fails."""
        self._deferred.append(work)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        deferred, self._deferred = self._deferred, []
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote storage: fsspec's own transaction
        else:
            _save_beside(checkpoint, Path(path))
        for work in deferred:
            work(Path(path))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        kwargs = {"weights_only": weights_only} if weights_only is not None else {}
        return read_checkpoint(path, map_location=map_location or "cpu", **kwargs)


def _is_local(path: str | Path) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def _save_beside(checkpoint: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with tmp.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def deferred_io(trainer: Trainer | None) -> AtomicCheckpointIO | None:
    """The trainer's ``AtomicCheckpointIO`` when the checkpoint being saved goes through it, else None.

    Strategies that write sharded checkpoint folders (FSDP, ModelParallel) bypass the CheckpointIO.
    """
    if trainer is None:
        return None
    strategy = trainer.strategy
    io = strategy.checkpoint_io
    if isinstance(io, AtomicCheckpointIO) and type(strategy).save_checkpoint is Strategy.save_checkpoint:
        return io
    return None


def checkpoint_folders(trainer: Trainer) -> list[Path]:
    """Folders this run saves checkpoints in: each ModelCheckpoint's, and that of the interrupted checkpoint."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    folders.append(interrupted_path(trainer).parent)
    if trainer.ckpt_path and _is_local(trainer.ckpt_path):  # the run resumed from: a write there may have died
        folders.append(Path(trainer.ckpt_path).parent)
    return list(dict.fromkeys(folders))


def interrupted_path(trainer: Trainer) -> Path:
    """Where a signal's checkpoint goes: the ModelCheckpoint folder, else ``<log_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath) / INTERRUPTED
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / INTERRUPTED


def find_last_checkpoint(trainer: Trainer) -> Path:
    """The newest checkpoint (``last.ckpt``, ``interrupted.ckpt``, ...) of this run's folders, earlier versions too.

    ModelCheckpoint's default folder is ``<save_dir>/<name>/version_N/checkpoints``, and a new run gets
    a new ``version_N``: the previous versions' folders are searched as well. None found is an error
    naming the folders searched.
    """
    patterns = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            patterns.append(Path(cb.dirpath))
    if trainer.loggers and trainer.loggers[0].save_dir is not None:
        logger = trainer.loggers[0]
        patterns.append(Path(logger.save_dir) / str(logger.name or "") / "version_*" / "checkpoints")
    else:
        patterns.append(Path(trainer.default_root_dir) / "checkpoints")
    found: list[Path] = []
    for pattern in dict.fromkeys(patterns):
        for folder in map(Path, glob.glob(str(pattern))):
            found += [p for p in folder.glob("*.ckpt") if p.is_file()]
    if not found:
        searched = ", ".join(str(p) for p in dict.fromkeys(patterns))
        raise FileNotFoundError(f"--ckpt_path last: no checkpoint (*.ckpt) in {searched}")
    return max(found, key=lambda p: p.stat().st_mtime)


class CheckpointGuard(Callback):
    """On SIGTERM or SIGINT: finish the step, save a checkpoint and the export, and stop the run.

    The checkpoint goes to ``interrupted.ckpt`` in the ModelCheckpoint folder, or in
    ``<log_dir>/checkpoints`` when checkpointing is off; one line on stderr says where. A second
    SIGINT stops at once, without a checkpoint. At the start of fit it removes the temporary files
    of checkpoint writes that were killed.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saved: Path | None = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.signum, self.saved = None, None
        folders = checkpoint_folders(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            for folder in folders:
                remove_partials(folder)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        # Set after Lightning's own SIGTERM handler (which this one calls), so that Lightning's
        # teardown puts back the handlers from before fit.
        for signum, handler in ((signal.SIGTERM, self._on_sigterm), (signal.SIGINT, self._on_sigint)):
            self._previous[signum] = signal.signal(signum, handler)
        self._trainer = trainer

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        previous = self._previous.get(signal.SIGTERM)
        if callable(previous):
            previous(signum, frame)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum
        # Lightning's SIGTERM handler (the one ours replaced) stops the loop after the current step, on every rank.
        previous = self._previous.get(signal.SIGTERM)
        if callable(previous):
            previous(signum, frame)
        else:
            self._trainer._signal_connector.received_sigterm = True

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous.clear()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous and threading.current_thread() is threading.main_thread():
            self._restore_handlers()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning skips the teardown hook when fit fails: put the handlers back here.
        self.teardown(trainer, pl_module, "fit")
        if self.signum is None or not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = interrupted_path(trainer)
        trainer.save_checkpoint(path)
        self.saved = path
        note(f"lit-search-rl: stopped by {signal.Signals(self.signum).name} after step {trainer.global_step}; "
             f"checkpoint saved to {path} (resume with --ckpt_path {path})")  # fmt: skip

    @property
    def exit_status(self) -> int | None:
        """The exit status the run should end with after a signal, or None."""
        if self.signum is None:
            return None
        return 128 + int(self.signum)  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


@rank_zero_only
def note(line: str) -> None:
    """Print one line on stderr, from rank zero."""
    print(line, file=sys.stderr, flush=True)


def install_checkpointing(trainer: Trainer) -> Trainer:
    """Give ``trainer`` the ``AtomicCheckpointIO`` (unless it has a CheckpointIO of its own) and a CheckpointGuard."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if not any(isinstance(cb, CheckpointGuard) for cb in trainer.callbacks):
        trainer.callbacks.append(CheckpointGuard())
    return trainer


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(value, "__dict__") and not isinstance(value, type) and not isinstance(value, dict):
        value = {k: v for k, v in vars(value).items() if not k.startswith("__")}
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            if str(key).startswith("_"):  # LightningCLI's bookkeeping (_class_path, _instantiator)
                continue
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def settings_differing(stored: dict[str, Any], given: Any) -> list[str]:
    """Init arguments whose value in the checkpoint's ``hyper_parameters`` differs from the one given now."""
    stored_flat, given_flat = _flatten(stored), _flatten(given)
    return sorted(k for k in stored_flat.keys() & given_flat.keys() if str(stored_flat[k]) != str(given_flat[k]))
