"""Checkpoint writes: a full disk keeps the previous checkpoint, the export follows its checkpoint, leftovers go."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_search_rl.checkpointing import (
    AtomicCheckpointIO,
    CheckpointGuard,
    install_checkpointing,
    partial_path,
    read_checkpoint,
)
from lit_search_rl.policy import EXPORT_INFO, ExportsPolicy, load_policy, load_tokenizer


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    settings = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                "enable_model_summary": False, "max_steps": 1, "default_root_dir": str(tmp_path), **kwargs}  # fmt: skip
    return install_checkpointing(Trainer(**settings))


class _Limited:
    """A file on a nearly full disk: writes past the free space write what fits, then raise ENOSPC."""

    def __init__(self, f, budget: list[int]) -> None:
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        room = max(0, self._budget[0])
        if len(data) > room:
            self._f.write(bytes(data[:room]))
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


@contextmanager
def full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, free: int) -> Iterator[None]:
    """``folder`` is on its own file system (not the temp directory's), with ``free`` bytes left."""
    folder = folder.resolve()
    real_open, real_rename, real_replace = builtins.open, os.rename, os.replace
    budget = [free]

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(path).resolve().is_relative_to(folder)

    def limited_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _Limited(f, budget) if inside(file) and any(c in mode for c in "wax+") else f

    def cross_device(real):
        def rename(src, dst, *args, **kwargs):
            if inside(src) != inside(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *args, **kwargs)

        return rename

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", limited_open)
        m.setattr(io, "open", limited_open)
        m.setattr(os, "rename", cross_device(real_rename))
        m.setattr(os, "replace", cross_device(real_replace))
        m.setattr(shutil, "_USE_CP_SENDFILE", False)  # copy through write(), like a full disk sees it
        yield


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = trainer(tmp_path)
    t.fit(BoringModel())
    last = tmp_path / "ckpt" / "last.ckpt"
    t.save_checkpoint(last)
    before = read_checkpoint(last)
    with full_disk(monkeypatch, last.parent, free=4096), pytest.raises(OSError, match="No space left"):
        t.save_checkpoint(last)
    after = read_checkpoint(last)
    assert after["global_step"] == before["global_step"]
    torch.testing.assert_close(after["state_dict"], before["state_dict"])
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temp file left either


def test_leftovers_of_killed_writes_are_removed_at_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    leftover = partial_path(folder / "last.ckpt", pid=999_999)
    leftover.write_bytes(b"half a checkpoint")
    t = trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)])
    t.fit(BoringModel())
    assert not leftover.exists()
    assert (folder / "last.ckpt").is_file()
    assert isinstance(t.strategy.checkpoint_io, AtomicCheckpointIO)


class TinyPolicyModule(ExportsPolicy, LightningModule):
    """The tiny policy trained on a toy loss, with the export of ``ExportsPolicy``."""

    def __init__(self, model: str, export_dir: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(model)
        self.policy = load_policy(model)

    def training_step(self, batch, batch_idx):
        return sum((p**2).sum() for p in self.policy.parameters())

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(8, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.policy.parameters(), lr=0.1)


def test_the_export_follows_the_checkpoint_it_belongs_to(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, export = tmp_path / "ckpt", tmp_path / "export"
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, every_n_train_steps=1)
    t = trainer(tmp_path, max_steps=3, callbacks=[checkpoint])
    real_save = torch.save

    def save_failing_at_step_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_failing_at_step_2)
    with pytest.raises(OSError, match="No space left"):
        t.fit(TinyPolicyModule(str(model_dir), str(export)))
    saved = read_checkpoint(folder / "last.ckpt")
    assert saved["global_step"] == 1
    info = json.loads((export / EXPORT_INFO).read_text())
    assert info == {"global_step": 1, "checkpoint": str((folder / "last.ckpt").resolve())}
    exported = load_policy(str(export))
    name, value = next(iter(exported.state_dict().items()))
    torch.testing.assert_close(value, saved["state_dict"][f"policy.{name}"])


class Interrupt(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C


def test_sigint_finishes_the_step_saves_a_checkpoint_and_asks_for_130(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = signal.getsignal(signal.SIGINT)
    t = trainer(tmp_path, max_steps=5, callbacks=[Interrupt()])
    with pytest.raises(SIGTERMException):
        t.fit(BoringModel())
    guard = next(cb for cb in t.callbacks if isinstance(cb, CheckpointGuard))
    saved = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert guard.saved == saved and guard.exit_status == 130
    assert read_checkpoint(saved)["global_step"] == 1
    assert f"stopped by SIGINT after step 1; checkpoint saved to {saved}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before
