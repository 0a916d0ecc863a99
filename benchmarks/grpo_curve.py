"""Test EM against GRPO steps: the demo's GRPO stage from a demo run's warm start, tested every N steps.

Run after ``make demo`` (or ``lit-search-rl demo --out DIR --seed S``):

    .venv/bin/python benchmarks/grpo_curve.py --run runs/demo --seed 0 --steps 240 --every 40 --out /tmp/curve0

The stage is ``lit_search_rl.tools.demo.train_grpo`` with the demo's settings and pool, run for ``--steps``
rollout steps in a folder of its own (``--out``, which links the run's warm start, index and world), with the
run's *test* questions as its validation set, so that the validation every ``--every`` steps is a test-EM curve
(this measures how the gain grows with steps; it selects nothing). Prints the curve per family and writes it
to ``OUT/curve.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lit_search_rl.threads import configure_threads

configure_threads()

from lit_search_rl.tools.demo import FAMILIES, DemoSettings, train_grpo  # noqa: E402


def link_run(run: Path, out: Path) -> None:
    """``out`` as a demo run folder over ``run``'s warm start, index and questions, with the test files as ``val``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sft-model", "index"):
        if not (out / name).exists():
            (out / name).symlink_to((run / name).resolve())
    for split in ("val", "test"):
        (out / "world" / split).mkdir(parents=True, exist_ok=True)
        for family in FAMILIES:
            link = out / "world" / split / f"{family}.jsonl"
            if not link.exists():
                link.symlink_to((run / "world" / "test" / f"{family}.jsonl").resolve())
    for name in ("train.jsonl", "sft.jsonl"):
        if not (out / "world" / name).exists():
            (out / "world" / name).symlink_to((run / "world" / name).resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A finished demo run folder.")
    parser.add_argument("--seed", type=int, default=0, help="The seed the demo run used.")
    parser.add_argument("--steps", type=int, default=240, help="GRPO rollout steps.")
    parser.add_argument("--every", type=int, default=40, help="Rollout steps between tests.")
    parser.add_argument("--out", type=Path, required=True, help="Folder of this stage (created).")
    parser.add_argument("--overrides", nargs="*", default=[], help="More `fit` overrides, applied last.")
    args = parser.parse_args()
    if not (args.run / "sft-model").is_dir() or not (args.run / "world" / "test").is_dir():
        parser.error(f"--run {args.run}: no demo run there (sft-model/ and world/test/ are missing)")
    link_run(args.run, args.out)
    settings = DemoSettings(grpo_steps=args.steps, val_every=args.every)
    cli = train_grpo(args.out, args.seed, settings, name="curve", extra=args.overrides)
    with open(Path(cli.trainer.log_dir) / "validation.csv") as f:
        curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    print(f"| rollout steps | trajectories | {' | '.join(FAMILIES)} | avg |")
    print("| ---: | ---: |" + " ---: |" * (len(FAMILIES) + 1))
    for row in curve:
        cells = " | ".join(f"{row[k]:.3f}" for k in (*FAMILIES, "avg"))
        print(f"| {int(row['step'])} | {int(row['trajectories']):,} | {cells} |")
    (args.out / "curve.json").write_text(json.dumps({"run": str(args.run), "seed": args.seed, "curve": curve},
                                                    indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
