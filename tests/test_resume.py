"""Resume: N steps, a restart from the checkpoint, N more steps equal 2N steps straight."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_search_rl.grpo import GRPOModule
from lit_search_rl.lightning_cli import SearchRLCLI

ROOT = Path(__file__).resolve().parents[1]


class ParityRewardModule(GRPOModule):
    """Rewards a trajectory by the parity of its token ids: deterministic, and a random model still gets signal."""

    def score(self, groups, questions):
        return [[float(sum(t.response_ids) % 2) for t in group] for group in groups]


def fit(tmp_path: Path, run: str, model_dir: Path, world_dir: Path, bm25_dir: Path, epochs: int, *extra: str):
    args = [
        "fit", "--config", str(ROOT / "configs/synthetic/grpo-recycle.yaml"),
        "--model", "tests.test_resume.ParityRewardModule",
        "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / run), "--trainer.enable_checkpointing", "true",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / run / 'ckpt'}",
        "--trainer.callbacks.init_args.save_last=true",
        "--model.model", str(model_dir), "--model.retriever", str(bm25_dir),
        "--model.group_size", "2", "--model.batch_size", "2", "--model.oversample", "2",
        "--model.micro_batch_size", "2", "--model.learning_rate", "1e-5", "--model.warmup_steps", "3",
        "--model.rollout.max_turns", "2", "--model.rollout.max_new_tokens_per_turn", "8",
        "--model.export_dir", str(tmp_path / run / "export"),
        "--data.train", str(world_dir / "train.jsonl"), "--data.val_sets", "[]", "--data.test_sets", "[]",
        *extra,
    ]  # fmt: skip
    return SearchRLCLI(args=args)


def scalars(folder: Path, tag: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for events_file in sorted(folder.rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update({e.step: e.value for e in events.Scalars(tag)})
    return values


def test_resume_matches_the_straight_run(tmp_path: Path, model_dir: Path, world_dir: Path, bm25_dir: Path) -> None:
    straight = fit(tmp_path, "straight", model_dir, world_dir, bm25_dir, 2)
    fit(tmp_path, "split", model_dir, world_dir, bm25_dir, 1)
    last = tmp_path / "split" / "ckpt" / "last.ckpt"
    resumed = fit(tmp_path, "split", model_dir, world_dir, bm25_dir, 2, "--ckpt_path", str(last))

    assert straight.trainer.global_step >= 2, "too few updates for the test to mean anything"
    assert resumed.trainer.global_step == straight.trainer.global_step
    assert resumed.datamodule.pool_digest() == straight.datamodule.pool_digest()
    for name, p in straight.model.policy.named_parameters():
        torch.testing.assert_close(dict(resumed.model.policy.named_parameters())[name], p, rtol=0, atol=1e-6)
    for tag in ("train/reward_mean", "train/loss", "pool/active", "train/signal_fraction"):
        a, b = scalars(tmp_path / "straight", tag), scalars(tmp_path / "split", tag)
        assert a and a.keys() == b.keys(), tag
        for step in a:
            assert abs(a[step] - b[step]) < 1e-5, (tag, step, a[step], b[step])
