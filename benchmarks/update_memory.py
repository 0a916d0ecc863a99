"""Peak memory of one update pass of SmolLM2-135M, with and without gradient checkpointing.

Run after ``make smollm2``:

    .venv/bin/python benchmarks/update_memory.py

One micro-batch of ``configs/synthetic/grpo-smollm2.yaml``'s size (4 trajectories) at its
longest (1,536 tokens) goes through the policy's forward/backward, each setting in a fresh child
process, whose peak RSS (``ru_maxrss``) above the loaded model and the seconds are reported with
the gradient (both settings must give the same one). Writes
``benchmarks/results/update_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_cost import make_batch  # noqa: E402

from lit_search_rl.grpo import GRPOModule  # noqa: E402


def one(model: Path, index: Path, rows: int, length: int, checkpointing: bool) -> dict:
    """Run in the child: one micro-batch's forward/backward; its memory, time and a gradient digest."""
    m = GRPOModule(model=str(model), retriever=str(index), group_size=rows, batch_size=1, micro_batch_size=rows,
                   gradient_checkpointing=checkpointing)  # fmt: skip
    m.configure_model()
    m.policy.train()
    batch = make_batch(m, rows, length, group_size=rows)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    start = time.perf_counter()
    m.accumulate_gradients(batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = [float(p.grad.double().norm()) for p in m.policy.parameters() if p.grad is not None]
    return {"peak_mib": peak, "loaded_mib": loaded, "seconds": seconds, "gradient_norms": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/smollm2-135m-instruct"))
    parser.add_argument("--index", type=Path, default=Path("runs/demo/index"))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=1536)
    parser.add_argument("--child", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/update_memory.json"))
    args = parser.parse_args()
    if args.child:
        result = one(args.model, args.index, args.rows, args.length, args.child == "checkpointing")
        print("RESULT " + json.dumps(result))
        return
    if not args.model.exists():
        raise SystemExit(f"--model: {args.model} is missing (run `make smollm2` first)")
    results = {}
    for setting in ("plain", "checkpointing"):
        child = subprocess.run([sys.executable, __file__, "--child", setting, *sys.argv[1:]], capture_output=True,
                               text=True, check=False)  # fmt: skip
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            raise SystemExit(f"the {setting} run failed:\n{child.stderr[-3000:]}")
        results[setting] = json.loads(lines[-1][len("RESULT ") :])
    plain, ckpt = results["plain"]["gradient_norms"], results["checkpointing"]["gradient_norms"]
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain, ckpt, strict=True))
    for r in results.values():
        del r["gradient_norms"]  # compared above; the per-parameter lists are not a result
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"rows": args.rows, "length": args.length, "gradient_norm_max_rel_diff": worst,
                                        **results}, indent=2) + "\n")  # fmt: skip
    print(f"| setting | peak RSS | above the loaded model | seconds | ({args.rows} x {args.length} tokens) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for setting, r in results.items():
        print(f"| {setting} | {r['peak_mib']:.0f} MiB | {r['peak_mib'] - r['loaded_mib']:.0f} MiB | "
              f"{r['seconds']:.1f} s | |")  # fmt: skip
    print(f"gradient norms agree within {worst:.1e} (relative)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
