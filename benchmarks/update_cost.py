"""What the on-policy update saves: one pass with and without the separate old-logprob forward.

Run after ``make demo`` and ``make smollm2``:

    .venv/bin/python benchmarks/update_cost.py

With ``update_epochs: 1`` the policy being trained is still the old policy, so the training
forward's detached logprobs serve as pi_old and the no-grad forward over the batch is skipped.
For the tiny SFT model and SmolLM2-135M, on one batch of random trajectories (N rows of L tokens,
the response masked from the middle on), this times the update as it was (no-grad old-logprob
forward, then the micro-batched forward/backward) and as it is (forward/backward only), in
alternating repeats of one process, checks that both give the same gradient, and prints the
median seconds and their ratio. Writes ``benchmarks/results/update_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lit_search_rl.grpo import GRPOModule, UpdateBatch
from lit_search_rl.grpo.losses import group_advantages
from lit_search_rl.grpo.update import frozen_logprobs


def make_batch(m: GRPOModule, rows: int, length: int, group_size: int) -> UpdateBatch:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, m.policy.config.vocab_size, (rows, length), generator=generator)
    loss_mask = torch.zeros(rows, length, dtype=torch.long)
    loss_mask[:, length // 2 :] = 1
    rewards = torch.tensor([float(i % 2) for i in range(rows)])  # every group has signal
    groups = torch.arange(rows) // group_size
    return UpdateBatch(input_ids, torch.ones_like(input_ids), loss_mask, group_advantages(rewards, groups))


def one_pass(m: GRPOModule, batch: UpdateBatch, frozen_forward: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """Seconds of one update pass and its gradient."""
    m.policy.zero_grad(set_to_none=True)
    start = time.perf_counter()
    batch.old_logprobs = frozen_logprobs(m.policy, batch, m.hparams.micro_batch_size) if frozen_forward else None
    m.accumulate_gradients(batch)
    seconds = time.perf_counter() - start
    return seconds, {n: p.grad.clone() for n, p in m.policy.named_parameters() if p.grad is not None}


def measure(model: Path, index: Path, rows: int, length: int, micro: int, repeats: int) -> dict:
    m = GRPOModule(model=str(model), retriever=str(index), group_size=4, batch_size=rows // 4,
                   micro_batch_size=micro)  # fmt: skip
    m.configure_model()
    m.policy.train()
    batch = make_batch(m, rows, length, group_size=4)
    one_pass(m, batch, frozen_forward=False)  # warm-up
    before, after = [], []
    for _ in range(repeats):
        seconds, with_frozen = one_pass(m, batch, frozen_forward=True)
        before.append(seconds)
        seconds, on_policy = one_pass(m, batch, frozen_forward=False)
        after.append(seconds)
    worst = max((on_policy[n] - g).abs().max().item() for n, g in with_frozen.items())
    return {"rows": rows, "length": length, "micro_batch_size": micro, "before_s": statistics.median(before),
            "after_s": statistics.median(after), "max_gradient_difference": worst}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A `make demo` run folder.")
    parser.add_argument("--smollm2", type=Path, default=Path("runs/smollm2-135m-instruct"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/update_cost.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {"tiny (demo SFT model)": (args.run / "sft-model", 16, 512, 8),
              "SmolLM2-135M": (args.smollm2, 8, 384, 4)}  # fmt: skip
    results = {}
    for name, (model, rows, length, micro) in models.items():
        if not model.exists():
            raise SystemExit(f"{model} is missing (run `make demo` and `make smollm2` first)")
        results[name] = measure(model, args.run / "index", rows, length, micro, args.repeats)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print("| model | batch (rows x tokens) | with old-logprob forward | on-policy | ratio | max gradient difference |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['rows']} x {r['length']} | {r['before_s']:.2f} s | {r['after_s']:.2f} s | "
              f"{r['after_s'] / r['before_s']:.2f} | {r['max_gradient_difference']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
