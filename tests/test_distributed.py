"""Data parallel GRPO on CPU (gloo): balanced shards, whole-batch gradients, identical pools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from lit_search_rl.distributed import balanced_rows, shard
from lit_search_rl.grpo import GRPOModule
from lit_search_rl.grpo.config import LossConfig
from lit_search_rl.grpo.update import frozen_logprobs, make_update_batch
from lit_search_rl.rollout.agent import Trajectory

ROOT = Path(__file__).resolve().parents[1]


@given(st.integers(0, 50), st.integers(1, 8))
def test_shards_and_balanced_rows_partition_the_batch(n: int, world: int) -> None:
    items = list(range(n))
    assert sorted(i for r in range(world) for i in shard(items, r, world)) == items
    shares = [balanced_rows(n, r, world) for r in range(world)]
    assert sorted(i for rows, _ in shares for i in rows) == items
    assert len({len(rows) + pad for rows, pad in shares}) == 1  # same row count everywhere


def _groups(vocab: int) -> tuple[list[list[Trajectory]], list[list[float]], list[int]]:
    """Three groups of three ragged trajectories (9 rows: 5 on rank 0, 4 + 1 padding on rank 1)."""
    g = torch.Generator().manual_seed(0)
    groups, rewards = [], []
    for q in range(3):
        group = []
        for j in range(3):
            prompt = torch.randint(3, vocab, (4 + q,), generator=g).tolist()
            response = torch.randint(3, vocab, (3 + 2 * j,), generator=g).tolist()
            mask = [1] * len(response)
            mask[1] = 0  # an information token inside the response
            group.append(Trajectory(prompt, response, mask))
        groups.append(group)
        rewards.append([1.0, 0.0, float(q % 2)])
    return groups, rewards, [0, 1, 2]


def _gradient(model_dir: str, bm25_dir: str, agg: str) -> dict[str, torch.Tensor]:
    m = GRPOModule(model=model_dir, retriever=bm25_dir, group_size=3, batch_size=3, micro_batch_size=1,
                   loss=LossConfig(loss_agg=agg))  # fmt: skip
    m.configure_model()
    torch.manual_seed(1)
    groups, rewards, chosen = _groups(m.policy.config.vocab_size)
    batch = make_update_batch(groups, rewards, chosen, m.tokenizer.pad_token_id)
    old = frozen_logprobs(m.policy, batch, m.hparams.micro_batch_size)
    # Some clipping, by a function of token and position, so it is the same whichever rank holds a row.
    batch.old_logprobs = old + 0.3 * torch.sin(batch.input_ids[:, 1:].float() + torch.arange(old.shape[1]))
    m.accumulate_gradients(batch)
    return {n: p.grad.clone() for n, p in m.policy.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, init: str, model_dir: str, bm25_dir: str, agg: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        grads = _gradient(model_dir, bm25_dir, agg)
        for g in grads.values():  # what DDP does with each rank's gradient: the mean over ranks
            dist.all_reduce(g)
            g /= world
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_two_ranks_give_the_single_process_gradient(tmp_path: Path, model_dir: Path, bm25_dir: Path, agg: str) -> None:
    # The rows are dealt out unevenly (5 and 4 + 1 padding row); normalisers and the loss
    # scale must still make the averaged gradient that of the whole batch.
    single = _gradient(str(model_dir), str(bm25_dir), agg)
    out = tmp_path / "grads.pt"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(model_dir), str(bm25_dir), agg, str(out)), nprocs=2, join=True)
    double = torch.load(out)
    assert single.keys() == double.keys()
    for name, g in single.items():
        torch.testing.assert_close(double[name], g, rtol=1e-4, atol=1e-6, msg=name)


STRATEGIES = {
    "ddp": ["--trainer.strategy", "ddp"],
    # FSDP2: every decoder layer and the root sharded over the 2 ranks
    "fsdp2": ["--trainer.strategy", "ModelParallelStrategy", "--trainer.strategy.data_parallel_size", "2",
              "--trainer.strategy.tensor_parallel_size", "1"],
}  # fmt: skip


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_two_process_fit_keeps_pools_identical_and_ranks_balanced(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                                  bm25_dir: Path, strategy: str) -> None:  # fmt: skip
    records = tmp_path / "records"
    args = [
        "fit", "--config", str(ROOT / "configs/synthetic/grpo-recycle.yaml"),
        *STRATEGIES[strategy], "--trainer.devices", "2", "--trainer.limit_train_batches", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.callbacks+=tests.distributed_helpers.RankRecorder",
        f"--trainer.callbacks.init_args.out={records}",
        "--model.model", str(model_dir), "--model.retriever", str(bm25_dir), "--model.reward", "coin",
        "--model.group_size", "3", "--model.batch_size", "3", "--model.oversample", "2",
        "--model.micro_batch_size", "3", "--model.rollout.max_turns", "2",
        "--model.rollout.max_new_tokens_per_turn", "8", "--model.optimizer.learning_rate", "1e-3",
        "--model.export_dir", str(tmp_path / "export"), "--data.train", str(world_dir / "train.jsonl"),
        "--data.val_sets", "[]", "--data.test_sets", "[]",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cli = Path(sys.executable).parent / "lit-search-rl"
    done = subprocess.run([str(cli), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [[json.loads(line) for line in (records / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and ranks[0][0]["world"] == 2
    assert ranks[0][0]["sharded"] == (strategy == "fsdp2")
    for a, b in zip(*ranks, strict=True):
        assert a["pool"] == b["pool"]  # same draws, same reports
        assert a["rows"] == b["rows"]  # same micro-steps on both ranks
        assert a["weights"] == b["weights"]  # gradients were all-reduced
    assert ranks[0][-1]["global_step"] >= 1, "no update happened; the test checks nothing about the weights"
    assert (tmp_path / "export" / "config.json").is_file()
