"""Where a GRPO step's time goes, for the tiny config and the SmolLM2-135M config, with peak RSS.

Run after ``make demo`` and ``make smollm2``:

    .venv/bin/python benchmarks/step_time.py

Each config runs as a real ``lit-search-rl fit`` for a few steps; the breakdown comes from the
``time/<phase>`` tags it logs (exclusive seconds per phase, summed over the steps after the
first), and the peak resident memory from the child's ``wait4`` resource usage. Framework
overhead is everything except generation, retrieval, forward/backward and the optimizer:
the agent loop's own bookkeeping, rewards, the pool, building the update batch, logging and the
unbooked rest. Prints Markdown tables and writes ``benchmarks/results/step_time.json``.

The tiny config trains its SFT'd model with the exact-match reward. SmolLM2-135M-Instruct has not
learned the tag protocol, so exact match gives it no signal group and no update; its run uses
``coin_reward`` below instead, so that the update phases are measured at its scale. What a phase
costs depends on the trajectories and their lengths, not on the reward's values.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
WORK = ("generate", "retrieve", "forward_backward", "optimizer")
OVERHEAD = ("rollout", "reward", "pool", "update_batch", "logging", "other")
_COIN = random.Random(0)


def coin_reward(answer: str | None, golden_answers: list[str]) -> float:
    """1 or 0 by a fair coin whatever the answer: a group of K is zero-variance with probability 2**(1-K)."""
    return float(_COIN.random() < 0.5)


def run_fit(config: str, steps: int, extra: list[str]) -> tuple[dict[str, list[float]], float]:
    """Run ``fit`` in a child process; (per-step scalars by tag, peak RSS in MiB)."""
    with tempfile.TemporaryDirectory() as logs:
        args = ["fit", "--config", str(ROOT / config), f"--trainer.limit_train_batches={steps}",
                "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={logs}",
                "--trainer.limit_val_batches=0", "--data.init_args.val_sets=[]", "--data.init_args.test_sets=[]",
                *extra]  # fmt: skip
        binary = Path(os.sys.executable).parent / "lit-search-rl"
        path = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}  # the child imports this file's coin_reward
        child = subprocess.Popen([str(binary), *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{config} failed:\n{child.stderr.read().decode()[-3000:]}")
        events = EventAccumulator(str(next(Path(logs).rglob("events.out.tfevents.*")).parent))
        events.Reload()
        scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
        return scalars, usage.ru_maxrss / 1024  # KiB on Linux


def breakdown(scalars: dict[str, list[float]]) -> dict[str, float]:
    """Seconds per phase over the steps after the first (start-up effects excluded)."""
    phases = {phase: sum(scalars.get(f"time/{phase}", [])[1:]) for phase in (*WORK, *OVERHEAD)}
    phases["step"] = sum(scalars["train/step_time"][1:])
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny_steps", type=int, default=6)
    parser.add_argument("--smollm2_steps", type=int, default=4)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/step_time.json"))
    args = parser.parse_args()
    configs = {
        "tiny (configs/synthetic/grpo-recycle.yaml)": ("configs/synthetic/grpo-recycle.yaml", args.tiny_steps, []),
        "SmolLM2-135M (configs/synthetic/grpo-smollm2.yaml)": ("configs/synthetic/grpo-smollm2.yaml",
                                                               args.smollm2_steps,
                                                               ["--model.init_args.reward=step_time:coin_reward"]),
    }  # fmt: skip
    results = {}
    for name, (config, steps, extra) in configs.items():
        scalars, rss = run_fit(config, steps, extra)
        phases = breakdown(scalars)
        overhead = sum(phases[p] for p in OVERHEAD)
        results[name] = {"phases": phases, "overhead_share": overhead / phases["step"], "peak_rss_mib": rss,
                         "steps_measured": len(scalars["train/step_time"]) - 1,
                         "updates_measured": len(scalars.get("train/loss", [])[1:])}  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")

    names = list(results)
    print("| phase | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for phase in (*WORK, *OVERHEAD, "step"):
        cells = [
            f"{r['phases'][phase]:.2f} s ({r['phases'][phase] / r['phases']['step']:.1%})" for r in results.values()
        ]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print("| framework overhead | " + " | ".join(f"{r['overhead_share']:.1%}" for r in results.values()) + " |")
    print("| peak RSS | " + " | ".join(f"{r['peak_rss_mib']:.0f} MiB" for r in results.values()) + " |")
    print("| steps measured | " + " | ".join(str(r["steps_measured"]) for r in results.values()) + " |")
    print("| updates measured | " + " | ".join(str(r["updates_measured"]) for r in results.values()) + " |")


if __name__ == "__main__":
    main()
