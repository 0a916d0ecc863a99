"""The ``train/*`` and ``time/*`` figures of one GRPO step, as plain dictionaries for ``log_dict``."""

from __future__ import annotations

from collections.abc import Sequence

from lit_search_rl.data.pool import Outcome
from lit_search_rl.rollout.agent import Trajectory
from lit_search_rl.timing import PhaseTimer

STEP_PHASES = ("generate", "retrieve", "rollout", "reward", "pool", "update_batch", "forward_backward", "optimizer",
               "logging")  # fmt: skip
"""Phases of a training step logged as ``time/<phase>``: ``rollout`` is the agent loop's own work besides
generating and retrieving, ``pool`` the strategy's draws and reports, ``update_batch`` building the padded
update tensors, ``logging`` the metric calls."""


def rollout_metrics(
    groups: Sequence[Sequence[Trajectory]],
    rewards: Sequence[Sequence[float]],
    outcomes: Sequence[Outcome],
    chosen: Sequence[int],
    invalid_rewards: int,
) -> dict[str, float]:
    """What the step's rollouts did: reward, outcome shares of the drawn groups, effective batch, lengths."""
    flat = [t for g in groups for t in g]
    drawn, trajectories = max(1, len(outcomes)), max(1, len(flat))
    return {
        "train/reward_mean": sum(sum(r) for r in rewards) / trajectories,
        "train/signal_fraction": list(outcomes).count("signal") / drawn,
        "train/too_easy_fraction": list(outcomes).count("too_easy") / drawn,
        "train/too_hard_fraction": list(outcomes).count("too_hard") / drawn,
        "train/effective_batch_size": float(len(chosen)),
        "train/invalid_rewards": float(invalid_rewards),
        "train/response_length": sum(sum(t.loss_mask) for t in flat) / trajectories,
        "train/num_searches": sum(t.num_searches for t in flat) / trajectories,
        "train/rollouts_per_update": float(len(flat)),
    }


def time_metrics(seconds: float, timer: PhaseTimer) -> dict[str, float]:
    """``train/step_time`` and its breakdown ``time/<phase>``; ``time/other`` is the unbooked rest.

    Every phase is present every step (0 when absent), so no tag repeats a stale value.
    """
    booked = dict(timer.seconds)
    metrics = {"train/step_time": seconds, **{f"time/{phase}": booked.get(phase, 0.0) for phase in STEP_PHASES}}
    metrics["time/other"] = seconds - sum(booked.values())
    return metrics
