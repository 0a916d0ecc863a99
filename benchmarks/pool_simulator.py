"""Pool simulator: every query strategy at the paper's scale, with no model.

Run: ``.venv/bin/python benchmarks/pool_simulator.py`` (seconds).

Each of 10,000 queries has a latent difficulty; a rollout is correct with probability
sigmoid(skill - difficulty). The simulated policy's skill grows with every signal group it
trains on (``--skill_model information``: with each group's mass of normalised advantages, which
grows with its size and its balance of right and wrong) and drifts at random. Each strategy spends
the same rollout budget (84.5K trajectories, K = 4, B = 32, k = 2 where the strategy oversamples)
through the library's own ``draw_step`` and ``QueryPool``, with a pool weighting (``greso_*``:
GRESO's history-aware factors) or a rollout allocator (``knapsack_*``: Knapsack RL's per-query
group sizes at the same budget) on top where named. Reported: updates taken, signal fraction of
drawn groups, signal groups per 100 trajectories, effective-batch fill, recycled share of the
effective batch (whole run and last quarter), flips by kind, queries consumed, final skill, and
draw + report time per step on 1M queries.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lit_search_rl.data.allocation import make_allocator
from lit_search_rl.data.pool import QueryPool
from lit_search_rl.data.query_sampler import draw_step
from lit_search_rl.data.strategies import make_strategy
from lit_search_rl.data.weighting import make_weighting

SETTINGS = {
    "grpo": {"name": "grpo"},
    "dapo": {"name": "dapo", "max_rounds": 4},
    "bounded_dapo": {"name": "bounded_dapo", "oversample": 2},
    "recycle": {"name": "recycle", "oversample": 2},
    "soft_recycle": {"name": "recycle", "oversample": 2, "recycled_weight": 0.1},
    "greso_dapo": {"name": "dapo", "max_rounds": 4, "weighting": "greso"},
    "greso_bounded_dapo": {"name": "bounded_dapo", "oversample": 2, "weighting": "greso"},
    "greso_recycle": {"name": "recycle", "oversample": 2, "weighting": "greso"},
    "knapsack_dapo": {"name": "dapo", "max_rounds": 4, "allocator": "knapsack"},
    "knapsack_bounded_dapo": {"name": "bounded_dapo", "oversample": 2, "allocator": "knapsack"},
    "knapsack_recycle": {"name": "recycle", "oversample": 2, "allocator": "knapsack"},
    "greso_knapsack_dapo": {"name": "dapo", "max_rounds": 4, "weighting": "greso", "allocator": "knapsack"},
    "greso_knapsack_bounded_dapo": {
        "name": "bounded_dapo",
        "oversample": 2,
        "weighting": "greso",
        "allocator": "knapsack",
    },  # fmt: skip
    "greso_knapsack_recycle": {"name": "recycle", "oversample": 2, "weighting": "greso", "allocator": "knapsack"},
}


def simulate(label: str, queries: int, batch: int, group: int, budget: int, seed: int,
             skill_model: str = "groups") -> dict:  # fmt: skip
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.5, queries)
    skill = -0.5
    settings = dict(SETTINGS[label])
    weighting = make_weighting(settings.pop("weighting", "none"))
    allocator = make_allocator(settings.pop("allocator", "fixed"), group)
    strategy = make_strategy(settings.pop("name"), batch_size=batch, **settings)
    pool = QueryPool([str(i) for i in range(queries)], seed=seed)
    spent = updates = steps = 0
    signal = drawn = recycled = chosen = 0
    late_recycled = late_chosen = 0
    flips = {"recovery": 0, "drift": 0}
    flipped: set[int] = set()

    def outcomes_of(indices: np.ndarray, sizes: list[int] | None = None):
        nonlocal spent
        sizes = sizes if sizes is not None else [group] * len(indices)
        p = 1.0 / (1.0 + np.exp(-(skill - difficulty[indices])))
        correct = rng.binomial(sizes, p)
        spent += sum(sizes)
        return [[1.0] * int(c) + [0.0] * (n - int(c)) for c, n in zip(correct, sizes, strict=True)]

    history = []
    while spent < budget:
        before = pool.last_outcome.copy()
        result = draw_step(pool, strategy, outcomes_of, allocator)
        weighting.update(pool, result.outcomes)
        steps += 1
        drawn += len(result.drawn)
        signal += sum(o == "signal" for o in result.outcomes)
        for i in result.drawn:
            if before[i] in (0, 2) and pool.last_outcome[i] == 1:
                flipped.add(i)
        for kind in flips:
            flips[kind] += result.flips[kind]
        chosen += len(result.chosen)
        recycled += result.recycled
        history.append((spent, len(result.chosen), result.recycled))
        if result.chosen:
            updates += 1
            skill += 0.0005 * learning(result, pool, group, skill_model)
        skill += rng.normal(0.0, 0.02)  # and drifting at random
    last = history[3 * len(history) // 4 :]
    late_chosen = sum(h[1] for h in last)
    late_recycled = sum(h[2] for h in last)
    return {
        "strategy": label, "updates": updates, "steps": steps, "trajectories": spent,
        "signal_fraction": signal / max(1, drawn),
        "signal_per_100_trajectories": 100 * signal / max(1, spent), "batch_fill": chosen / max(1, steps * batch),
        "recycled_share": recycled / max(1, chosen), "recycled_share_last_quarter": late_recycled / max(1, late_chosen),
        "recovery": flips["recovery"], "drift": flips["drift"], "flipped_unique_share": len(flipped) / queries,
        "consumed": pool.consumed, "epochs": pool.epoch, "final_skill": skill, "history": history,
    }  # fmt: skip


def learning(result, pool: QueryPool, group: int, skill_model: str) -> float:
    """How much a step's effective batch teaches, in signal groups of K at an even split.

    ``groups``: one per signal group, whatever its size. ``information``: a group of n rollouts with a share
    q rewarded counts ``(n / K) * 2 * sqrt(q * (1 - q))``, its mass of normalised advantages against a group of
    K at q = 1/2: a larger group on an uncertain question teaches more, which is what per-query budgets spend
    trajectories on.
    """
    if skill_model == "groups":
        return float(len(result.chosen))
    sizes = result.sizes or [group] * len(result.drawn)
    total = 0.0
    for position in result.picked:
        q = float(pool.success[result.drawn[position]])
        total += sizes[position] / group * 2.0 * np.sqrt(q * (1.0 - q))
    return total


def draw_speed(size: int = 1_000_000, batch: int = 32, oversample: int = 2, steps: int = 100,
               weighting: str = "none") -> float:  # fmt: skip
    """Milliseconds per recycle step (draw k*B, report, the weighting's update) on a pool of ``size`` queries."""
    pool = QueryPool([str(i) for i in range(size)])
    strategy = make_strategy("recycle", batch_size=batch, oversample=oversample)
    weights = make_weighting(weighting)
    rng = np.random.default_rng(0)
    outcomes = ["too_hard", "signal", "too_easy"]
    start = time.perf_counter()
    for _ in range(steps):
        result = draw_step(pool, strategy, lambda idx: [outcomes[j] for j in rng.integers(0, 3, len(idx))])
        weights.update(pool, result.outcomes)
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--budget", type=int, default=84_500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skill_model", choices=["groups", "information"], default="groups",
                        help="what the simulated policy learns from (see learning())")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pool_simulator.json"))
    args = parser.parse_args()
    rows = []
    start = time.perf_counter()
    for label in SETTINGS:
        runs = [simulate(label, args.queries, args.batch, args.group, args.budget, s, args.skill_model)
                for s in args.seeds]  # fmt: skip
        mean = {k: (float(np.mean([r[k] for r in runs])) if k != "strategy" else label)
                for k in runs[0] if k != "history"}  # fmt: skip
        mean["history"] = runs[0]["history"]  # the first seed's curve, for the plot
        rows.append(mean)
    elapsed = time.perf_counter() - start
    speed, greso_speed = draw_speed(), draw_speed(weighting="greso")
    print(f"{len(SETTINGS)} strategies x {len(args.seeds)} seeds in {elapsed:.1f}s; recycle step on 1M queries: "
          f"{speed:.2f} ms, with GRESO's update {greso_speed:.2f} ms\n")  # fmt: skip
    print(
        "| strategy | updates | signal fraction | signal groups per 100 trajectories | batch fill | "
        "recycled share (all / last quarter) | "
        "recovery flips | drift flips | unique queries flipped | consumed | final skill |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        shares = f"{r['recycled_share']:.3f} / {r['recycled_share_last_quarter']:.3f}"
        print(f"| {r['strategy']} | {r['updates']:.0f} | {r['signal_fraction']:.3f} | "
              f"{r['signal_per_100_trajectories']:.2f} | {r['batch_fill']:.3f} | "
              f"{shares} | {r['recovery']:.0f} | {r['drift']:.0f} | {r['flipped_unique_share']:.3f} | "
              f"{r['consumed']:.0f} | {r['final_skill']:.2f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out.with_suffix(".png"), args.batch)
    for r in rows:
        r.pop("history")
    args.out.write_text(json.dumps({"rows": rows, "ms_per_step_1m": speed, "ms_per_step_1m_greso": greso_speed,
                                    "seconds": elapsed}, indent=2))  # fmt: skip
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path, batch: int) -> None:
    """Recycled share and effective-batch fill against trajectories spent, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (share, fill) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for r in rows:
        spent = np.array([h[0] for h in r["history"]])
        chosen = np.array([h[1] for h in r["history"]], dtype=float)
        recycled = np.array([h[2] for h in r["history"]], dtype=float)
        window = 20  # steps; smooths the per-step noise
        kernel = np.ones(window)
        # "valid" windows only: zero padding at the ends would draw a false drop.
        smooth_share = np.convolve(recycled, kernel, "valid") / np.maximum(np.convolve(chosen, kernel, "valid"), 1)
        x = spent[window - 1 :]
        share.plot(x, smooth_share, label=r["strategy"])
        fill.plot(x, np.convolve(chosen / batch, kernel / window, "valid"), label=r["strategy"])
    share.set_ylabel("recycled share of batch")
    fill.set_ylabel("effective batch fill")
    fill.set_xlabel("trajectories spent")
    share.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
