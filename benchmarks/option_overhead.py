"""What each sampling option costs the framework per step, apart from the rollouts and updates it changes.

Run: ``.venv/bin/python benchmarks/option_overhead.py [--model DIR]`` (about a minute; the model defaults to
the demo's SFT model, ``runs/demo/sft-model``). Prints milliseconds per step for:

- GRESO's update (``data.weighting: greso``): the controller and new factors for every query, plus the next
  draw's rebuild, on a pool of 900 queries (the demo's) and of 1,000,000; against a draw and report without it;
- Knapsack budgets (``data.allocator: knapsack``): the allocation of k * B = 64 candidates on the same pools;
- RL-ZVP's advantage shaping (``model.loss.zero_variance_advantage``): ``accumulate_gradients`` over the same
  batch of 16 trajectories (one signal group, three zero-variance groups of 4), with the zero-variance rows
  shaped or left at GRPO's 0; the shaping is the difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lit_search_rl.threads import configure_threads

configure_threads()

from lit_search_rl.data.allocation import KnapsackAllocator  # noqa: E402
from lit_search_rl.data.pool import OUTCOMES, QueryPool  # noqa: E402
from lit_search_rl.data.weighting import GRESOWeighting  # noqa: E402
from lit_search_rl.grpo.config import LossConfig  # noqa: E402
from lit_search_rl.grpo.update import accumulate_gradients, make_update_batch  # noqa: E402
from lit_search_rl.policy import load_policy  # noqa: E402
from lit_search_rl.rollout.agent import Trajectory  # noqa: E402


def pool_step_ms(size: int, weighting: bool, allocate: bool, steps: int = 50) -> float:
    """Milliseconds per draw of 64, report, and the option's own work, on a pool with some history."""
    rng = np.random.default_rng(0)
    pool = QueryPool([str(i) for i in range(size)])
    greso, allocator = GRESOWeighting(), KnapsackAllocator(group_size=4)
    times = []
    for _ in range(steps + 5):
        start = time.perf_counter()
        drawn = pool.draw(64)
        if allocate:
            allocator.sizes(pool, drawn.tolist())
        outcomes = [OUTCOMES[j] for j in rng.integers(0, 3, len(drawn))]
        pool.report(drawn, outcomes, [1.0] * len(drawn), rng.random(len(drawn)))
        if weighting:
            greso.update(pool, outcomes)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[5:])


def shaping_ms(model_dir: Path, repeats: int = 20) -> tuple[float, float]:
    """Milliseconds of ``accumulate_gradients`` on one batch, without and with RL-ZVP's shaping."""
    policy = load_policy(str(model_dir)).train()
    torch.manual_seed(0)

    def group(rewards: list[float]) -> list[Trajectory]:
        return [Trajectory(torch.randint(3, 100, (20,)).tolist(), torch.randint(3, 100, (60,)).tolist(), [1] * 60)
                for _ in rewards]  # fmt: skip

    rewards = [[1.0, 0.0, 1.0, 0.0], [1.0] * 4, [0.0] * 4, [0.0] * 4]
    groups = [group(r) for r in rewards]
    plain = make_update_batch(groups, rewards, [0], pad_id=0, zero_variance=True)
    shaped = make_update_batch(groups, rewards, [0], pad_id=0, zero_variance=True)
    plain.zero_variance = None  # the same rows; the zero-variance ones keep GRPO's advantage, 0
    config = LossConfig(zero_variance_advantage=True)
    result = []
    for batch in (plain, shaped):
        times = []
        for _ in range(repeats):
            policy.zero_grad(set_to_none=True)
            start = time.perf_counter()
            accumulate_gradients(policy, batch, config, micro_batch_size=8, horizon=1024)
            times.append(time.perf_counter() - start)
        result.append(1000 * statistics.median(times[2:]))
    return result[0], result[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/sft-model"))
    args = parser.parse_args()
    for size in (900, 1_000_000):
        base, greso, knapsack = (pool_step_ms(size, *option) for option in ((False, False), (True, False),
                                                                              (False, True)))  # fmt: skip
        print(f"pool of {size:,}: draw + report {base:.2f} ms; with GRESO's update {greso:.2f} ms; "
              f"with Knapsack's allocation {knapsack:.2f} ms")  # fmt: skip
    plain, shaped = shaping_ms(args.model)
    print(f"update of 16 trajectories: {plain:.1f} ms; with RL-ZVP's shaping {shaped:.1f} ms "
          f"({100 * (shaped - plain) / plain:+.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
