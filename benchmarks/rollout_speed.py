"""Rollout engines side by side: ``HFEngine`` (transformers ``generate``) against ``TorchEngine``.

Run: ``.venv/bin/python benchmarks/rollout_speed.py`` after ``make demo`` (and ``make smollm2`` for the
SmolLM2-135M case; a case whose model folder is missing is skipped). Each (case, load, engine) runs in
a fresh process, on the same questions and seeds, and measures:

- ``agent tokens/s``: generated tokens per second of ``AgentLoop.rollout`` calls of the case's B
  trajectories (B / 4 questions, K = 4) with the rollout settings of the case's config (the tiny model:
  ``configs/synthetic/grpo-recycle.yaml``, the demo's; SmolLM2: ``grpo-smollm2.yaml``), BM25 in process,
  wall time of the whole loop (prefill, decoding, retrieval), over ``--rollouts`` calls on different
  questions and seeds;
- ``decode ms/step``: one ``generate`` call of B prompts for 64 tokens, minus a 1-token call (the
  prefill), divided by the extra steps; ``prefill ms``: the 1-token call (without reuse of an earlier
  call's keys and values: each call computes its prompts; the K copies of a prompt share one pass);
- ``first call s``: the first rollout of the process (warm-up: allocation, kernel selection);
- ``peak RSS``: the process's maximum resident set;
- the machine's arithmetic: float32 GEMM GFLOP/s at 512^3 (2 threads), and the share of it a
  decode step uses: ``2 x parameters x B`` FLOP per step against the step's time.

"busy" keeps one core busy with a second process (``python -c 'while True: pass'``) for the whole
measurement; ``other cores`` is everybody else's CPU use during the row, about 1 when the row is clean.
The environment is the project's: ``OMP_WAIT_POLICY=PASSIVE`` unless set (README, "CPU threads").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml
from thread_settings import gemm_gflops, run_child

from lit_search_rl.threads import configure_threads

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (model folder, B, the config whose rollout settings the case uses)
    "tiny B=32": ("runs/demo/sft-model", 32, "grpo-recycle.yaml"),
    "tiny B=64": ("runs/demo/sft-model", 64, "grpo-recycle.yaml"),
    "SmolLM2-135M B=16": ("runs/smollm2-135m-instruct", 16, "grpo-smollm2.yaml"),
}
ENGINES = ("hf", "torch", "torch-2")  # torch-2: the torch engine in two worker processes (model.rollout_workers 2)
LOADS = ("quiet", "busy")


def child(args: argparse.Namespace) -> dict:
    """Measure one engine on one case in this process."""
    import torch

    from lit_search_rl.io import read_jsonl
    from lit_search_rl.policy import load_policy, load_tokenizer
    from lit_search_rl.retrieval.index import load_retriever
    from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig
    from lit_search_rl.rollout.engine import SamplingConfig
    from lit_search_rl.rollout.hf_engine import HFEngine
    from lit_search_rl.rollout.protocols import TagProtocol
    from lit_search_rl.rollout.torch_engine import TorchEngine

    torch.manual_seed(0)
    result: dict = {"gemm_gflops": gemm_gflops(torch, seconds=0.5)}
    tokenizer = load_tokenizer(args.model)
    model = load_policy(args.model)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    rows = list(read_jsonl(args.world / "train.jsonl"))
    settings = yaml.safe_load((ROOT / "configs" / "synthetic" / args.config).read_text())
    config = RolloutConfig(**settings["model"]["init_args"]["rollout"])
    engine_class = TorchEngine if args.engine.startswith("torch") else HFEngine
    retriever, sampling = load_retriever(args.index), SamplingConfig(temperature=1.0, seed=0)
    if args.engine == "torch-2":  # two worker processes, each running the agent loop on half of the questions
        from lit_search_rl.rollout.process_engine import PooledAgentLoop, ProcessPool

        pool = ProcessPool(model, tokenizer, workers=2, retriever=retriever)
        agent = PooledAgentLoop(pool, sampling, config)
    else:
        agent = AgentLoop(engine_class(model, tokenizer, sampling), retriever, tokenizer, config)
    start = time.perf_counter()
    agent.rollout([rows[0]["question"]] * 2 + [rows[1]["question"]] * 2)  # two questions: each worker warms up
    result["first_call_s"] = time.perf_counter() - start

    result.update(agent_s=0.0, agent_tokens=0, searches=0)
    groups = args.batch // 4
    for call in range(args.rollouts):  # the same questions for every engine, seeded alike
        questions = [rows[(call * groups + i) % len(rows)]["question"] for i in range(groups) for _ in range(4)]
        start = time.perf_counter()
        trajectories = agent.rollout(questions)
        result["agent_s"] += time.perf_counter() - start
        result["agent_tokens"] += agent.stats.generated_tokens
        result["searches"] += sum(t.num_searches for t in trajectories)
    result["agent_tokens_per_s"] = result["agent_tokens"] / result["agent_s"]
    if args.engine == "torch-2":  # the per-step figures below are the torch rows' (one worker's engine)
        pool.close()
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result

    questions = [rows[i % len(rows)]["question"] for i in range(groups) for _ in range(4)]
    protocol = TagProtocol()
    prompts = [protocol.prompt_ids(tokenizer, q, config.max_parallel_queries, config.instruction) for q in questions]
    # Each call starts from scratch: the same prompts again would take the previous call's keys and values.
    fresh = {"reuse_prefixes": False} if args.engine == "torch" else {}
    engine = engine_class(model, tokenizer, SamplingConfig(temperature=1.0, seed=1), **fresh)
    engine.eos_ids = {max(model.config.vocab_size, len(tokenizer))}  # never sampled: each call runs its budget

    def call(budget: int) -> float:
        begin = time.perf_counter()
        engine.generate(prompts, [budget] * len(prompts), [])
        return time.perf_counter() - begin

    prefill = min(call(1) for _ in range(3))
    full = min(call(65) for _ in range(2))
    result["prefill_ms"] = 1000 * prefill
    result["decode_ms_per_step"] = 1000 * (full - prefill) / 64
    flop_per_step = 2 * result["parameters"] * args.batch
    result["arithmetic_share"] = flop_per_step / (result["decode_ms_per_step"] / 1000) / (result["gemm_gflops"] * 1e9)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure(case: str, engine: str, args: argparse.Namespace) -> dict:
    """One engine on one case in a fresh process; its figures plus wall time and the other processes' load."""
    model, batch, config = CASES[case]
    command = [sys.executable, __file__, "--child", "--engine", engine, "--model", model, "--batch", str(batch),
               "--config", config, "--rollouts", str(args.rollouts), "--world", str(args.world),
               "--index", str(args.index)]  # fmt: skip
    return run_child(command, args.timeout)


def print_tables(rows: list[dict]) -> None:
    def number(r: dict, key: str, form: str, scale: float = 1.0) -> str:
        return format(scale * r[key], form) if key in r else "-"  # torch-2 rows have no per-step figures

    print("\n| case | load | engine | agent tokens/s | decode ms/step | prefill ms | first call s | peak RSS MB | "
          "GEMM GFLOP/s | share of GEMM rate | other cores |")  # fmt: skip
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['load']} | {r['engine']} | {r['error']} | | | | | | | |")
            continue
        print(f"| {r['case']} | {r['load']} | {r['engine']} | {r['agent_tokens_per_s']:.0f} | "
              f"{number(r, 'decode_ms_per_step', '.2f')} | {number(r, 'prefill_ms', '.0f')} | "
              f"{r['first_call_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['gemm_gflops']:.0f} | "
              f"{number(r, 'arithmetic_share', '.1f', 100)}% | {r['other_cores']:.2f} |")  # fmt: skip
    by = {(r["case"], r["load"], r["engine"]): r for r in rows if "error" not in r}
    print("\n| case | load | engine | engine / hf agent tokens/s | engine / hf decode step | busy / quiet agent time |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for case, load in dict.fromkeys((r["case"], r["load"]) for r in rows):
        hf = by.get((case, load, "hf"))
        for engine in ENGINES[1:]:
            ours, quiet = by.get((case, load, engine)), by.get((case, "quiet", engine))
            if hf is None or ours is None:
                continue
            slowdown = f"{quiet['agent_tokens_per_s'] / ours['agent_tokens_per_s']:.2f}x" if quiet else ""
            has_step = "decode_ms_per_step" in ours
            step = f"{hf['decode_ms_per_step'] / ours['decode_ms_per_step']:.2f}x" if has_step else "-"
            print(f"| {case} | {load} | {engine} | {ours['agent_tokens_per_s'] / hf['agent_tokens_per_s']:.2f}x | "
                  f"{step} | {slowdown} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    parser.add_argument("--index", type=Path, default=Path("runs/demo/index"))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS))
    parser.add_argument("--rollouts", type=int, default=4, help="agent-loop calls per row (their tokens/s pooled)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per row")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout_speed.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_threads()  # before torch loads OpenMP, here and in the children
    if args.child:
        print(json.dumps(child(args)))
        return
    cases = [c for c in args.cases if Path(CASES[c][0]).is_dir()]
    for skipped in sorted(set(args.cases) - set(cases)):
        print(f"skipping {skipped}: no model folder {CASES[skipped][0]}", file=sys.stderr)
    rows = []
    for load in args.loads:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            for case in cases:
                for engine in args.engines:
                    rows.append({"case": case, "load": load, "engine": engine, **measure(case, engine, args)})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    print_tables(rows)
    report = {"machine": f"{os.cpu_count()} cores {platform.machine()}", "python": platform.python_version(),
              "wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
