"""Does an average of the last GRPO steps' weights test better than the last step's? One run, many averages.

Run after ``make demo`` (or ``lit-search-rl demo --out DIR``): the demo's GRPO stage from the run's warm start for
``--steps`` rollout steps, keeping a copy of the policy's weights after every optimizer step from ``--start`` on.
For each step in ``--ends`` it tests, as the demo tests, the weights of that step (``final``), their uniform
average over the last 25 and 50 steps (``avg25``, ``avg50``: stochastic weight averaging) and their exponential
moving averages with decay 0.9 and 0.95 begun at ``--start`` (``ema0.9``, ``ema0.95``). The training run is the
demo's, to the digit: the copies are read after each step and nothing of them reaches training.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weight_averaging.py --run runs/demo --seed 0 --steps 150 \\
        --ends 100 150

Prints each variant's gain over the warm start per family, with its interval; writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lit_search_rl.threads import configure_threads

configure_threads()

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_settings import warm_start  # noqa: E402

from lit_search_rl.policy import export_policy, load_tokenizer  # noqa: E402
from lit_search_rl.tools.demo import DemoSettings, evaluate_policy, family_gains, train_grpo  # noqa: E402

Weights = dict[str, torch.Tensor]
SNAPSHOTS: dict[int, Weights] = {}  # optimizer step -> a CPU copy of the policy's weights after it


class Snapshot(Callback):
    """Copies the policy's weights into ``SNAPSHOTS`` after every optimizer step from ``start`` on."""

    def __init__(self, start: int = 40) -> None:
        self.start = start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step >= self.start and step not in SNAPSHOTS:  # a batch without signal takes no optimizer step
            SNAPSHOTS[step] = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.policy.state_dict().items()}


def uniform(steps: list[int]) -> Weights:
    """The mean of the weights after ``steps``."""
    return {k: torch.stack([SNAPSHOTS[s][k].float() for s in steps]).mean(0) for k in SNAPSHOTS[steps[0]]}


def ema(steps: list[int], decay: float) -> Weights:
    """Exponential moving average over ``steps`` in order, begun at the first."""
    average = {k: v.float().clone() for k, v in SNAPSHOTS[steps[0]].items()}
    for step in steps[1:]:
        for k, v in average.items():
            v.mul_(decay).add_(SNAPSHOTS[step][k].float(), alpha=1 - decay)
    return average


def variants(end: int) -> dict[str, Weights]:
    """The weights tested at ``end``: its own, and averages of the steps up to it."""
    kept = [s for s in sorted(SNAPSHOTS) if s <= end]
    return {
        f"final@{end}": SNAPSHOTS[end],
        f"avg25@{end}": uniform([s for s in kept if s > end - 25]),
        f"avg50@{end}": uniform([s for s in kept if s > end - 50]),
        f"ema0.9@{end}": ema(kept, 0.9),
        f"ema0.95@{end}": ema(kept, 0.95),
    }


def save_like(export: Path, weights: Weights, folder: Path) -> None:
    """``export`` (a policy folder) with ``weights`` in place of its own, saved to ``folder``."""
    from transformers import AutoModelForCausalLM

    export_policy(AutoModelForCausalLM.from_pretrained(export), load_tokenizer(str(export)), folder, state=weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A finished demo run folder.")
    parser.add_argument("--seed", type=int, default=0, help="The seed the demo run used.")
    parser.add_argument("--steps", type=int, default=150, help="GRPO rollout steps.")
    parser.add_argument("--ends", type=int, nargs="+", default=[100, 150], help="Steps to test at.")
    parser.add_argument("--start", type=int, default=40, help="First optimizer step whose weights are kept.")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the results (default RUN/averaging.json).")
    args = parser.parse_args()
    if not all(args.start + 50 <= end <= args.steps for end in args.ends):
        parser.error(f"--ends must lie between --start + 50 ({args.start + 50}) and --steps ({args.steps})")
    name = f"averaging{args.steps}"
    start = time.perf_counter()
    cli = train_grpo(args.run, args.seed, DemoSettings(), name=name, extra=[
        f"--trainer.limit_train_batches={args.steps}",
        f'--trainer.callbacks+={{"class_path": "__main__.Snapshot", "init_args": {{"start": {args.start}}}}}',
    ])  # fmt: skip
    seconds = time.perf_counter() - start
    before = warm_start(args.run, args.seed)
    results: dict[str, dict] = {}
    for end in args.ends:
        if end not in SNAPSHOTS:
            raise SystemExit(f"no weights after optimizer step {end}: the run took {cli.trainer.global_step} steps")
        for label, weights in variants(end).items():
            folder = args.run / "averaging" / f"{name}-{label}"
            save_like(args.run / f"{name}-model", weights, folder)
            after = evaluate_policy(args.run, folder, f"{name}-{label}", args.seed)
            gains = family_gains(before["em"], after.em, args.seed)
            results[label] = gains
            print(label, " ".join(f"{f} {g['gain']:+.3f}" for f, g in gains.items()),
                  f"[{gains['avg']['low']:+.3f}, {gains['avg']['high']:+.3f}]", flush=True)  # fmt: skip
    out = args.out or args.run / "averaging.json"
    out.write_text(json.dumps({"steps": args.steps, "seconds": seconds, "seed": args.seed, "results": results},
                              indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
