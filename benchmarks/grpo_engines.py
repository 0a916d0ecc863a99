"""The demo's GRPO stage with each rollout engine: GRPO steps per minute, same checkpoint and seed.

Run: ``.venv/bin/python benchmarks/grpo_engines.py`` after ``make demo``. Each engine runs
``lit-search-rl fit --config configs/synthetic/grpo-recycle.yaml`` with the demo's arguments (60
rollout steps from ``runs/demo/sft-model``, seed 0) in its own process, one after the other, and
writes its logs and model under a temporary folder. ``steps/min`` counts rollout steps (training
batches; a step without a signal group takes no optimizer step), the wall time includes start-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("hf", "torch", "torch-1", "torch-2")
"""``torch-N``: the torch engine with ``model.rollout_workers`` N (``torch``: whatever the config sets)."""


def fit_args(run: Path, out: Path, engine: str, steps: int, seed: int) -> list[str]:
    """The demo's GRPO stage (lit_search_rl/tools/demo.py) with ``engine``, writing under ``out``."""
    return [
        "fit", "--config", "configs/synthetic/grpo-recycle.yaml", f"--seed_everything={seed}",
        f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={out / 'logs'}",
        f"--model.init_args.model={run / 'sft-model'}", f"--model.init_args.retriever={run / 'index'}",
        f"--model.init_args.export_dir={out / 'model'}", f"--model.init_args.sampling.seed={seed}",
        "--model.init_args.optimizer.learning_rate=5e-05", f"--model.init_args.engine={engine.split('-')[0]}",
        *([f"--model.init_args.rollout_workers={engine.split('-')[1]}"] if "-" in engine else []),
        f"--data.init_args.train={run / 'world' / 'train.jsonl'}", f"--data.init_args.seed={seed}",
        "--data.init_args.val_sets=[]", "--data.init_args.test_sets=[]",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="the demo's output folder")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--steps", type=int, default=60, help="rollout steps (the demo's GRPO stage: 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_engines.json"))
    args = parser.parse_args()
    cli = Path(sys.executable).with_name("lit-search-rl")
    rows = []
    for engine in args.engines:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            done = subprocess.run([str(cli), *fit_args(args.run, Path(tmp), engine, args.steps, args.seed)],
                                  capture_output=True, text=True)  # fmt: skip
            seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{engine}: {done.stderr.strip().splitlines()[-1]}")
        rows.append({"engine": engine, "seconds": seconds, "steps": args.steps,
                     "steps_per_minute": 60 * args.steps / seconds})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print("\n| engine | rollout steps | seconds | steps/min |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['engine']} | {r['steps']} | {r['seconds']:.0f} | {r['steps_per_minute']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
