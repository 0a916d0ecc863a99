"""Resume: N steps, a restart from the checkpoint, N more steps equal 2N steps straight.

Also the run a scheduler stops with SIGTERM: it saves a checkpoint and the export, exits 143, and
resumes from there (``--ckpt_path last``) exactly; and checkpoints that cannot be used are one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_search_rl.checkpointing import AtomicCheckpointIO, read_checkpoint
from lit_search_rl.cli import main
from lit_search_rl.grpo import GRPOModule
from lit_search_rl.lightning_cli import SearchRLCLI
from lit_search_rl.policy import EXPORT_INFO

ROOT = Path(__file__).resolve().parents[1]


class ParityRewardModule(GRPOModule):
    """Rewards a trajectory by the parity of its token ids: deterministic, and a random model still gets signal."""

    def score(self, groups, questions):
        return [[float(sum(t.response_ids) % 2) for t in group] for group in groups]


class SignalAfterFirstUpdate(Callback):
    """Sends this process a real signal once the first optimizer step is done, as a scheduler would."""

    def __init__(self, signum: int = int(signal.SIGTERM)) -> None:
        self.signum, self.sent = signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 1 and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def fit_args(tmp_path: Path, run: str, model_dir: Path, world_dir: Path, bm25_dir: Path, epochs: int, *extra: str,
             checkpoints: bool = True) -> list[str]:  # fmt: skip
    """The tiny run; ``checkpoints=False`` keeps the shipped config's ``enable_checkpointing: false``."""
    checkpointing = [
        "--trainer.enable_checkpointing", "true",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / run / 'ckpt'}",
        "--trainer.callbacks.init_args.save_last=true",
    ] if checkpoints else []  # fmt: skip
    return [
        "fit", "--config", str(ROOT / "configs/synthetic/grpo-recycle.yaml"),
        "--model", "tests.test_resume.ParityRewardModule",
        "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / run), *checkpointing,
        "--model.model", str(model_dir), "--model.retriever", str(bm25_dir),
        "--model.group_size", "2", "--model.batch_size", "2", "--model.oversample", "2",
        "--model.micro_batch_size", "2", "--model.optimizer.learning_rate", "1e-5",
        "--model.optimizer.warmup_steps", "3",
        "--model.rollout.max_turns", "2", "--model.rollout.max_new_tokens_per_turn", "8",
        "--model.export_dir", str(tmp_path / run / "export"),
        "--data.train", str(world_dir / "train.jsonl"), "--data.val_sets", "[]", "--data.test_sets", "[]",
        *extra,
    ]  # fmt: skip


def fit(tmp_path: Path, run: str, model_dir: Path, world_dir: Path, bm25_dir: Path, epochs: int, *extra: str,
        checkpoints: bool = True) -> SearchRLCLI:  # fmt: skip
    return SearchRLCLI(args=fit_args(tmp_path, run, model_dir, world_dir, bm25_dir, epochs, *extra,
                                     checkpoints=checkpoints))  # fmt: skip


def scalars(folder: Path, tag: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for events_file in sorted(folder.rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update({e.step: e.value for e in events.Scalars(tag)})
    return values


def assert_same_run(straight: SearchRLCLI, resumed: SearchRLCLI, straight_dir: Path, resumed_dir: Path) -> None:
    assert straight.trainer.global_step >= 2, "too few updates for the test to mean anything"
    assert resumed.trainer.global_step == straight.trainer.global_step
    assert resumed.datamodule.sampler.digest() == straight.datamodule.sampler.digest()
    for name, p in straight.model.policy.named_parameters():
        torch.testing.assert_close(dict(resumed.model.policy.named_parameters())[name], p, rtol=0, atol=1e-6)
    for tag in ("train/reward_mean", "train/loss", "pool/active", "train/signal_fraction"):
        a, b = scalars(straight_dir, tag), scalars(resumed_dir, tag)
        assert a and a.keys() == b.keys(), tag
        for step in a:
            assert abs(a[step] - b[step]) < 1e-5, (tag, step, a[step], b[step])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def straight(runs: Path, model_dir: Path, world_dir: Path, bm25_dir: Path) -> SearchRLCLI:
    """Two epochs of three batches, uninterrupted."""
    return fit(runs, "straight", model_dir, world_dir, bm25_dir, 2)


@pytest.fixture(scope="module")
def interrupted(runs: Path, model_dir: Path, world_dir: Path, bm25_dir: Path) -> subprocess.CompletedProcess:
    """``lit-search-rl fit`` with checkpointing off (as shipped), stopped by SIGTERM after its first update."""
    args = fit_args(runs, "interrupted", model_dir, world_dir, bm25_dir, 2,
                    "--trainer.callbacks+=tests.test_resume.SignalAfterFirstUpdate", checkpoints=False)  # fmt: skip
    command = shutil.which("lit-search-rl", path=str(Path(sys.executable).parent))
    command = [command] if command else [sys.executable, "-m", "lit_search_rl.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=runs, timeout=300)


def test_resume_matches_the_straight_run(runs: Path, straight: SearchRLCLI, model_dir: Path, world_dir: Path,
                                         bm25_dir: Path) -> None:  # fmt: skip
    fit(runs, "split", model_dir, world_dir, bm25_dir, 1)
    last = runs / "split" / "ckpt" / "last.ckpt"
    resumed = fit(runs, "split", model_dir, world_dir, bm25_dir, 2, "--ckpt_path", str(last))
    assert_same_run(straight, resumed, runs / "straight", runs / "split")
    assert isinstance(resumed.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_sigterm_saves_a_checkpoint_and_the_export_and_exits_143(
    runs: Path, interrupted: subprocess.CompletedProcess
) -> None:
    assert interrupted.returncode == 143, interrupted.stderr[-3000:]
    checkpoint = runs / "interrupted" / "grpo-recycle" / "version_0" / "checkpoints" / "interrupted.ckpt"
    lines = [line for line in interrupted.stderr.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1 and f"checkpoint saved to {checkpoint}" in lines[0], interrupted.stderr[-3000:]
    saved = read_checkpoint(checkpoint)
    assert saved["global_step"] >= 1
    info = json.loads((runs / "interrupted" / "export" / EXPORT_INFO).read_text())
    assert info == {"global_step": saved["global_step"], "checkpoint": str(checkpoint.resolve())}


def test_resume_after_sigterm_is_exact_and_takes_the_given_settings(
    runs: Path, interrupted: subprocess.CompletedProcess, straight: SearchRLCLI, model_dir: Path,
    world_dir: Path, bm25_dir: Path,
) -> None:  # fmt: skip
    """``--ckpt_path last`` finds the checkpoint in the previous version folder; the new retriever is used."""
    assert interrupted.returncode == 143, interrupted.stderr[-3000:]
    moved = runs / "moved-index"
    shutil.copytree(bm25_dir, moved)
    resumed = fit(runs, "interrupted", model_dir, world_dir, bm25_dir, 2, "--ckpt_path", "last",
                  "--model.retriever", str(moved), checkpoints=False)  # fmt: skip
    assert resumed.trainer.ckpt_path.endswith("version_0/checkpoints/interrupted.ckpt")
    assert resumed.model.hparams.retriever == str(moved)
    assert_same_run(straight, resumed, runs / "straight", runs / "interrupted")


def test_ckpt_path_last_without_a_checkpoint_stops_with_the_folders_searched(
    tmp_path: Path, model_dir: Path, world_dir: Path, bm25_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    args = fit_args(tmp_path, "fresh", model_dir, world_dir, bm25_dir, 1, "--ckpt_path", "last", checkpoints=False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--ckpt_path last: no checkpoint" in err
    assert str(tmp_path / "fresh" / "grpo-recycle" / "version_*" / "checkpoints") in err
    assert not (tmp_path / "fresh" / "export").exists()


@pytest.mark.parametrize("kind", ["truncated", "empty"])
def test_an_incomplete_checkpoint_is_one_line_naming_it(
    kind: str, tmp_path: Path, runs: Path, interrupted: subprocess.CompletedProcess, model_dir: Path,
    world_dir: Path, bm25_dir: Path, capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    whole = (runs / "interrupted" / "grpo-recycle" / "version_0" / "checkpoints" / "interrupted.ckpt").read_bytes()
    bad = tmp_path / f"{kind}.ckpt"
    bad.write_bytes(whole[: len(whole) // 2] if kind == "truncated" else b"")
    args = fit_args(tmp_path, "bad", model_dir, world_dir, bm25_dir, 1, "--ckpt_path", str(bad), checkpoints=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "EOFError" not in err
    assert f"{bad} is not a complete checkpoint" in err.strip().splitlines()[-1], err


def test_resume_is_exact_with_greso_knapsack_and_zero_variance_advantages(
    runs: Path, model_dir: Path, world_dir: Path, bm25_dir: Path
) -> None:
    extra = ("--data.weighting", "greso", "--data.allocator", "knapsack", "--model.loss.zero_variance_advantage",
             "true", "--model.group_size", "4", "--model.micro_batch_size", "4")  # fmt: skip
    straight = fit(runs, "straight-options", model_dir, world_dir, bm25_dir, 2, *extra)
    fit(runs, "split-options", model_dir, world_dir, bm25_dir, 1, *extra)
    last = runs / "split-options" / "ckpt" / "last.ckpt"
    resumed = fit(runs, "split-options", model_dir, world_dir, bm25_dir, 2, *extra, "--ckpt_path", str(last))
    assert_same_run(straight, resumed, runs / "straight-options", runs / "split-options")
    weighting = straight.datamodule.sampler.weighting.state_dict()
    assert resumed.datamodule.sampler.weighting.state_dict() == weighting != {"p_easy": 0.5, "p_hard": 0.5}
