"""The main job (``lit-search-rl demo``) over several seeds: test EM before and after GRPO, and the gain.

Run: ``python benchmarks/demo_seeds.py --seeds 0 1 2`` (about ten minutes per seed on two CPU
cores). Writes ``benchmarks/results/demo_seeds.json`` and prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lit_search_rl.tools.demo import FAMILIES, DemoSettings, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/demo_seeds.json"))
    args = parser.parse_args()
    settings = DemoSettings()
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        result = run_demo(args.out / f"seed{seed}", seed, settings)
        result["times"]["total"] = time.perf_counter() - start
        runs.append(result)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"settings": vars(settings), "runs": runs}, indent=2) + "\n")

    print("| seed | " + " | ".join(f"{f} SFT → GRPO" for f in (*FAMILIES, "avg")) + " | gain (avg) | wall time |")
    print("|---" * (len(FAMILIES) + 4) + "|")
    for r in runs:
        cells = [f"{r['before'][f]['em']:.3f} → {r['after'][f]['em']:.3f}" for f in (*FAMILIES, "avg")]
        gain = r["after"]["avg"]["em"] - r["before"]["avg"]["em"]
        print(f"| {r['seed']} | " + " | ".join(cells) + f" | {gain:+.3f} | {r['times']['total']:.0f} s |")
    gains = [r["after"]["avg"]["em"] - r["before"]["avg"]["em"] for r in runs]
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"\nmean gain in test EM (avg over families): {statistics.mean(gains):+.3f} ± {spread:.3f} (sd over seeds)")


if __name__ == "__main__":
    main()
