"""The GRPO module: start-up checks, gradient invariants, non-finite steps, and a real few-step fit."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_search_rl.grpo import GRPOModule
from lit_search_rl.grpo.config import LossConfig, OptimizerConfig
from lit_search_rl.lightning_cli import SearchRLCLI
from lit_search_rl.rollout.process_engine import ProcessPool
from tests.test_grpo_update import random_batch

ROOT = Path(__file__).resolve().parents[1]


def module(model_dir: Path, bm25_dir: Path, **kwargs) -> GRPOModule:
    return GRPOModule(model=str(model_dir), retriever=str(bm25_dir), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"group_size": 1}, "model.group_size"),
        ({"group_size": 4, "batch_size": 3, "micro_batch_size": 5}, "model.micro_batch_size"),
        ({"loss": LossConfig(loss_agg="sum")}, "model.loss.loss_agg"),
        ({"reward": "bleu"}, "unknown reward 'bleu'"),
        ({"loss": LossConfig(clip_low=1.5)}, "model.loss.clip_low"),
        ({"loss": LossConfig(clip_c=0.5)}, "model.loss.clip_c"),
        ({"loss": LossConfig(kl_estimator="k9")}, "model.loss.kl_estimator"),
        ({"loss": LossConfig(advantage_scale="rank")}, "model.loss.advantage_scale must be one of group, batch, none"),
        ({"optimizer": OptimizerConfig(learning_rate=float("nan"))}, "model.optimizer.learning_rate"),
        ({"optimizer": OptimizerConfig(adam_beta2=1.0)}, "model.optimizer.adam_beta2"),
        ({"optimizer": OptimizerConfig(min_lr_ratio=1.5)}, "model.optimizer.min_lr_ratio must be in"),
        ({"optimizer": OptimizerConfig(decay_steps=-1)}, "model.optimizer.decay_steps"),
        ({"loss": LossConfig(zero_variance_alpha=-0.1)}, "model.loss.zero_variance_alpha must not be negative"),
        ({"loss": LossConfig(zero_variance_alpha=0.0)}, "model.loss.zero_variance_alpha must be above 0"),
        ({"rollout_workers": 0}, "model.rollout_workers must be at least 1"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_flag(model_dir: Path, bm25_dir: Path, kwargs: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        module(model_dir, bm25_dir, **kwargs)


def test_the_optimizer_takes_adams_settings() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    built = OptimizerConfig(learning_rate=1e-3, adam_beta1=0.95, adam_beta2=0.99, adam_eps=1e-5).build([weight])
    group = built["optimizer"].param_groups[0]
    assert group["betas"] == (0.95, 0.99) and group["eps"] == 1e-5 and group["lr"] == pytest.approx(1e-3)


def test_the_learning_rate_warms_up_then_stays_or_decays_to_its_floor() -> None:
    def rates(config: OptimizerConfig, steps: int) -> list[float]:
        built = config.build([torch.nn.Parameter(torch.zeros(3))])
        optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
        seen = []
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    constant = rates(OptimizerConfig(learning_rate=1.0, warmup_steps=2), 6)
    assert constant == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])  # veRL's default: no decay
    decayed = rates(OptimizerConfig(learning_rate=1.0, warmup_steps=2, decay_steps=4, min_lr_ratio=0.2), 9)
    assert decayed == pytest.approx([0.5, 1.0, 1.0, 0.2 + 0.8 * (0.5 + 0.5 * math.cos(math.pi / 4)), 0.6,
                                     0.2 + 0.8 * (0.5 - 0.5 * math.cos(math.pi / 4)), 0.2, 0.2, 0.2])  # fmt: skip


def nan_for_paris(answer: str | None, golden_answers: list[str]) -> float:
    """A user's reward that returns NaN for one answer."""
    return math.nan if answer == "Paris" else 1.0


_calls = itertools.count()


def nan_coin(answer: str | None, golden_answers: list[str]) -> float:
    """NaN on every third call, otherwise 0 and 1 in turn: signal groups, with NaNs among them."""
    i = next(_calls)
    return math.nan if i % 3 == 0 else float(i % 2)


def test_score_names_the_reward_and_the_question(model_dir: Path, bm25_dir: Path) -> None:
    from lit_search_rl.data.qa import QARecord
    from lit_search_rl.rollout.agent import Trajectory

    questions = [QARecord("q0", "Who?", ("ann",)), QARecord("q17", "Where?", ("paris",))]
    groups = [[Trajectory([1], answer="Ann"), Trajectory([1])], [Trajectory([1], answer="Paris"), Trajectory([1])]]
    m = module(model_dir, bm25_dir, reward="tests.test_rewards:raising_reward")
    with pytest.raises(ValueError, match="^reward tests.test_rewards:raising_reward raised ValueError on "
                                         "question q0: golden answers must not be empty$"):  # fmt: skip
        m.score(groups, questions)
    m = module(model_dir, bm25_dir, reward="tests.test_rewards:none_reward")
    with pytest.raises(ValueError, match=r"^reward tests.test_rewards:none_reward returned None on "
                                         r"question q0 \(expected a number\)$"):  # fmt: skip
        m.score(groups, questions)
    m = module(model_dir, bm25_dir, reward="tests.test_grpo:nan_for_paris")
    with pytest.raises(ValueError, match="^reward tests.test_grpo:nan_for_paris returned nan on question q17 "
                                         "for the answer 'Paris'.*model.invalid_reward"):  # fmt: skip
        m.score(groups, questions)
    m = module(model_dir, bm25_dir, reward="tests.test_grpo:nan_for_paris", invalid_reward="zero")
    assert m.score(groups, questions) == [[1.0, 1.0], [0.0, 1.0]]
    assert m.step_invalid_rewards == 1
    with pytest.raises(ValueError, match="model.invalid_reward must be one of error, zero"):
        module(model_dir, bm25_dir, invalid_reward="skip")


def fit_args(
    tmp_path: Path,
    model_dir: Path,
    world_dir: Path,
    bm25_dir: Path,
    *extra: str,
    cls: str = "lit_search_rl.grpo.GRPOModule",
) -> list[str]:
    return [
        "fit",
        "--config", str(ROOT / "configs/synthetic/grpo.yaml"),
        "--model", cls,
        "--trainer.limit_train_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--model.model", str(model_dir),
        "--model.retriever", str(bm25_dir),
        "--model.reward", "coin",
        "--model.group_size", "2",
        "--model.batch_size", "2",
        "--model.micro_batch_size", "2",
        "--model.rollout.max_turns", "2",
        "--model.rollout.max_new_tokens_per_turn", "8",
        "--model.export_dir", str(tmp_path / "export"),
        "--data.train", str(world_dir / "train.jsonl"),
        "--data.val_sets", "[]", "--data.test_sets", "[]",
        "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1",
        # k * B candidates, every drawn one consumed: what the plain data module did before it became a strategy
        "--data.strategy", "bounded_dapo", "--model.oversample", "2",
        *extra,
    ]  # fmt: skip


def fit(tmp_path: Path, model_dir: Path, world_dir: Path, bm25_dir: Path, *extra: str,
        cls: str = "lit_search_rl.grpo.GRPOModule"):  # fmt: skip
    return SearchRLCLI(args=fit_args(tmp_path, model_dir, world_dir, bm25_dir, *extra, cls=cls))


@pytest.mark.parametrize("update_epochs", [1, 2])
def test_few_step_fit_updates_the_policy_and_logs(tmp_path: Path, model_dir: Path, world_dir: Path, bm25_dir: Path,
                                                   coin_reward: None, monkeypatch: pytest.MonkeyPatch,
                                                   update_epochs: int) -> None:  # fmt: skip
    frozen_passes = []  # models that got a separate no-grad forward
    import lit_search_rl.grpo.module as grpo_module

    original = grpo_module.frozen_logprobs
    monkeypatch.setattr(grpo_module, "frozen_logprobs",
                        lambda model, *args: frozen_passes.append(model) or original(model, *args))  # fmt: skip
    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, "--model.update_epochs", str(update_epochs))
    m = cli.model
    assert m.trainer.global_step >= update_epochs and m.skipped_steps == 0
    # One pass is on-policy and needs no old-logprob forward; more passes keep pi_old from before the first.
    assert (m.policy in frozen_passes) == (update_epochs > 1)
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/reward_mean", "train/signal_fraction", "train/entropy", "train/step_time"} <= tags
    assert {"time/generate", "time/retrieve", "time/forward_backward", "time/optimizer", "time/other"} <= tags
    # The torch engine's logprobs are the policy's own: its token probabilities match pi_old's.
    assert all(0 <= e.value < 1e-4 for e in events.Scalars("train/rollout_probs_diff"))
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    assert any(not p.equal(dict(initial.named_parameters())[n]) for n, p in exported.named_parameters())


def test_rollouts_in_worker_processes_follow_the_trained_weights(
    tmp_path: Path,
    model_dir: Path,
    world_dir: Path,
    bm25_dir: Path,
    coin_reward: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, rollout = [], ProcessPool.rollout
    monkeypatch.setattr(ProcessPool, "rollout", lambda pool, *args: calls.append(pool) or rollout(pool, *args))
    # A large learning rate, so that rollouts from weights one step old would show in the logprobs.
    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, "--model.rollout_workers", "2",
              "--trainer.limit_train_batches", "3", "--model.optimizer.learning_rate", "0.05")  # fmt: skip
    assert cli.model.trainer.global_step >= 2 and cli.model.runner._pool is None  # the workers were stopped
    assert len(calls) >= 3  # every training batch rolled out in the workers
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    # After each optimizer step the workers sample from the new weights: their logprobs are pi_old's.
    diffs = [e.value for e in events.Scalars("train/rollout_probs_diff")]
    assert len(diffs) >= 2 and all(0 <= d < 1e-4 for d in diffs)


class NaNModule(GRPOModule):
    """Produces a non-finite loss in every update."""

    def token_logprobs(self, model, batch, rows):
        logprobs, entropy = super().token_logprobs(model, batch, rows)
        return (logprobs * float("nan"), entropy) if torch.is_grad_enabled() else (logprobs, entropy)


def test_non_finite_loss_skips_the_step_and_never_reaches_the_weights(tmp_path: Path, model_dir: Path,
                                                                      world_dir: Path, bm25_dir: Path,
                                                                      coin_reward: None) -> None:  # fmt: skip
    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, cls="tests.test_grpo.NaNModule")
    m = cli.model
    assert m.skipped_steps >= 1 and m.trainer.global_step == 0
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    assert all(p.equal(dict(initial.named_parameters())[n]) for n, p in m.policy.named_parameters())
    assert all(torch.isfinite(p).all() for p in m.policy.parameters())


RECYCLING = ["--data", "lit_search_rl.data.recycling_datamodule.RecyclingDataModule", "--data.val_sets", "[]",
             "--data.test_sets", "[]", "--data.strategy", "recycle", "--model.oversample", "2"]  # fmt: skip


def test_invalid_rewards_scored_zero_are_counted_and_train(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                           bm25_dir: Path) -> None:  # fmt: skip
    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, *RECYCLING, "--data.train", str(world_dir / "train.jsonl"),
              "--model.reward", "tests.test_grpo:nan_coin", "--model.invalid_reward", "zero")  # fmt: skip
    m = cli.model
    assert m.trainer.global_step >= 1 and m.skipped_steps == 0
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    invalid = [e.value for e in events.Scalars("train/invalid_rewards")]
    assert len(invalid) == 2 and sum(invalid) >= 2  # a third of 2 steps x 4 questions x 2 rollouts
    assert all(math.isfinite(e.value) for e in events.Scalars("train/reward_mean"))
    assert all(math.isfinite(e.value) for e in events.Scalars("train/loss"))


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ("tests.test_rewards:raising_reward", "raised ValueError on question .+: golden answers must not be"),
        ("tests.test_rewards:none_reward", r"returned None on question \S+ \(expected a number\)"),
        ("tests.test_grpo:nan_coin", "returned nan on question .+ for "),
    ],
)
def test_a_failing_reward_stops_fit_with_one_line_naming_it(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                            bm25_dir: Path, capsys: pytest.CaptureFixture,
                                                            reward: str, message: str) -> None:  # fmt: skip
    from lit_search_rl.cli import main

    args = fit_args(tmp_path, model_dir, world_dir, bm25_dir, *RECYCLING, "--data.train",
                    str(world_dir / "train.jsonl"), "--model.reward", reward)  # fmt: skip
    assert main(args) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert re.match(f"lit-search-rl fit: error: reward {re.escape(reward)} {message}", line), line


def test_lora_trains_adapters_only_and_exports_merged_weights(tmp_path: Path, model_dir: Path, bm25_dir: Path) -> None:
    pytest.importorskip("peft")
    m = module(model_dir, bm25_dir, group_size=2, batch_size=1, micro_batch_size=2, lora_rank=4,
               export_dir=str(tmp_path / "export"))  # fmt: skip
    m.configure_model()
    trainable = [n for n, p in m.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = random_batch(m.policy, [[1, 0]], width=10)
    m.accumulate_gradients(batch)
    assert all(p.grad is None for n, p in m.policy.named_parameters() if "lora_" not in n)
    m.export()
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert not any("lora" in n for n, _ in exported.named_parameters())
    assert [n for n, p in m.policy.named_parameters() if p.requires_grad] == trainable  # adapters still there


def test_recycling_fit_draws_from_the_pool_and_checkpoints_it(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                              bm25_dir: Path, coin_reward: None) -> None:  # fmt: skip
    recycling = "lit_search_rl.data.recycling_datamodule.RecyclingDataModule"
    extra = ["--data", recycling, "--data.train", str(world_dir / "train.jsonl"), "--data.val_sets", "[]",
             "--data.test_sets", "[]", "--data.strategy", "recycle", "--model.oversample", "2",
             "--trainer.enable_checkpointing",
             "true", "--trainer.default_root_dir", str(tmp_path / "root"),
             "--trainer.callbacks+=lit_search_rl.callbacks.recycling_plot.RecyclingPlot"]  # fmt: skip
    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, *extra)
    dm = cli.datamodule
    assert dm.pool.counters["draws"] == 2 and dm.pool.counters["drawn"] == 2 * 2 * 2  # 2 steps of k*B = 4
    assert dm.pool.active + dm.pool.consumed == len(dm.records)
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"pool/active", "pool/consumed", "train/recycled_fraction", "train/drift_fraction"} <= set(
        events.Tags()["scalars"]
    )
    assert "recycling" in events.Tags()["images"]  # the end-of-fit plot, also a PNG in the log folder
    assert list((tmp_path / "logs").rglob("recycling.png"))
    [checkpoint] = list((tmp_path / "root").rglob("*.ckpt")) or list(tmp_path.rglob("*.ckpt"))
    state = torch.load(checkpoint, weights_only=False)
    saved = state["RecyclingDataModule"]["pool"]
    assert saved["counters"]["draws"] == 2 and list(saved["ids"]) == [r.id for r in dm.records]


def test_knapsack_budgets_reach_the_rollouts_and_the_update(tmp_path: Path, model_dir: Path, world_dir: Path,
                                                             bm25_dir: Path, coin_reward: None) -> None:  # fmt: skip
    extra = [
        "--data.strategy",
        "recycle",
        "--data.allocator",
        "knapsack",
        "--trainer.limit_train_batches",
        "3",
        "--model.group_size",
        "4",
        "--model.micro_batch_size",
        "4",
    ]
    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, *extra)
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    rollouts = [e.value for e in events.Scalars("train/rollouts_per_update")]
    assert rollouts == [16.0, 16.0, 16.0]  # k * B = 4 candidates, K = 4 each on average: the fixed budget
    assert {"train/rollouts_per_query_min", "train/rollouts_per_query_max"} <= set(events.Tags()["scalars"])
    assert cli.datamodule.sampler.allocator is not None and cli.trainer.global_step > 0


def test_rl_zvp_trains_on_zero_variance_groups_and_logs_their_share(tmp_path: Path, model_dir: Path,
                                                                     world_dir: Path, bm25_dir: Path,
                                                                     coin_reward: None) -> None:  # fmt: skip
    fit(tmp_path, model_dir, world_dir, bm25_dir, "--model.loss.zero_variance_advantage", "true",
        "--model.loss.zero_variance_alpha", "0.2")  # fmt: skip
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    shares = [e.value for e in events.Scalars("train/zero_variance_share")]
    assert shares and all(0.0 <= v <= 1.0 for v in shares)


def test_rollout_budget_stops_training_at_the_step_that_crosses_it(tmp_path: Path, model_dir: Path,
                                                                    world_dir: Path, bm25_dir: Path,
                                                                    coin_reward: None) -> None:  # fmt: skip
    from lit_search_rl.callbacks.rollout_budget import RolloutBudget

    cli = fit(tmp_path, model_dir, world_dir, bm25_dir, "--trainer.limit_train_batches", "10",
              "--trainer.callbacks+=lit_search_rl.callbacks.rollout_budget.RolloutBudget",
              "--trainer.callbacks.init_args.max_rollouts", "9")  # fmt: skip
    budget = next(c for c in cli.trainer.callbacks if isinstance(c, RolloutBudget))
    assert budget.total == 16  # 4 candidates x 2 rollouts per step: the second step crosses 9
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    assert float(cli.trainer.callback_metrics["train/rollouts_total"]) == 16.0


def test_training_without_a_query_sampler_is_refused_naming_the_data_module(model_dir: Path, bm25_dir: Path) -> None:
    from types import SimpleNamespace

    m = module(model_dir, bm25_dir)
    m._trainer = SimpleNamespace(datamodule=SimpleNamespace())
    with pytest.raises(TypeError, match="needs a data module with a QuerySampler .RecyclingDataModule.; "
                                        "SimpleNamespace has none"):  # fmt: skip
        m.sample()
