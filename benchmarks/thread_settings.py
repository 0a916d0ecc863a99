"""OpenMP thread and wait settings on a quiet machine and with one core kept busy by another process.

Run: ``.venv/bin/python benchmarks/thread_settings.py`` after ``make demo`` (it reads the demo's SFT
model, world and index, read-only). Each setting runs in a fresh process, because libgomp reads
``OMP_WAIT_POLICY`` only when torch loads it. Each process measures, with the demo's SFT model:

- ``decode ms/step``: one ``HFEngine.generate`` call of B prompts (KV cache, sampling, no stop strings),
  wall time divided by the decode steps (prefill included, as in a rollout);
- ``agent tokens/s``: one ``AgentLoop.rollout`` of the same B questions (BM25 retrieval in process);
- ``update ms``: one forward and backward of a (B, T) batch with a token-logprob loss, plus an AdamW step,
  as the SFT and GRPO updates do;
- the machine's arithmetic: float32 matrix-multiply GFLOP/s at 512x512x512 (the reference the other
  figures read against) and the time of 1,000 decode-shaped 32x128x384 products.

"busy" runs a second process (``python -c 'while True: pass'``) for the whole measurement and stops it
at the end. ``other cores`` is the CPU time of everything but the measured process during its run, in
cores (from /proc/stat): about 0 on a quiet machine, about 1 with the busy process; more means somebody
else was running too and the row is not clean.
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

# The settings compared: extra environment, and torch.set_num_threads (None: torch's default).
VARIANTS: dict[str, tuple[dict[str, str], int | None]] = {
    "default": ({}, None),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "torch.set_num_threads(1)": ({}, 1),
    "PASSIVE, 2 threads": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    # Spin briefly before sleeping (libgomp's default is 300,000 iterations; PASSIVE is 0).
    "GOMP_SPINCOUNT=1000": ({"GOMP_SPINCOUNT": "1000"}, None),
    "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, None),
    "GOMP_SPINCOUNT=100000": ({"GOMP_SPINCOUNT": "100000"}, None),
}
DEFAULT_VARIANTS = ["default", "OMP_WAIT_POLICY=PASSIVE", "torch.set_num_threads(1)", "PASSIVE, 2 threads",
                    "GOMP_SPINCOUNT=10000"]  # fmt: skip
LOADS = ("quiet", "busy")


def busy_jiffies() -> int:
    """CPU time of the whole machine (all processes, all cores) so far, in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


def gemm_gflops(torch, size: int = 512, seconds: float = 1.0) -> float:
    """float32 matrix-multiply throughput (GFLOP/s) at size x size x size."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e9


def child(args: argparse.Namespace) -> dict:
    """Measure one setting in this process (its environment was set by the parent)."""
    import torch

    from lit_search_rl.io import read_jsonl
    from lit_search_rl.policy import load_policy, load_tokenizer
    from lit_search_rl.retrieval.index import load_retriever
    from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig
    from lit_search_rl.rollout.engine import SamplingConfig
    from lit_search_rl.rollout.hf_engine import HFEngine
    from lit_search_rl.rollout.protocols import TagProtocol

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"threads": torch.get_num_threads()}
    result["gemm_gflops"] = gemm_gflops(torch)
    x, w = torch.randn(32, 128), torch.randn(128, 384)
    start = time.perf_counter()
    for _ in range(1000):
        x @ w
    result["small_matmuls_ms"] = 1000 * (time.perf_counter() - start)

    tokenizer = load_tokenizer(str(args.model))
    model = load_policy(str(args.model))
    rows = list(read_jsonl(args.world / "train.jsonl"))[: args.questions]
    questions = [r["question"] for r in rows for _ in range(args.group)]
    config = RolloutConfig(max_turns=args.max_turns, max_new_tokens_per_turn=args.max_new_tokens)
    prompts = [TagProtocol().prompt_ids(tokenizer, q, config.max_parallel_queries) for q in questions]
    engine = HFEngine(model, tokenizer, SamplingConfig(temperature=1.0, seed=0))
    engine.generate(prompts[:2], [4, 4], [])  # warm-up
    start = time.perf_counter()
    generations = engine.generate(prompts, [args.max_new_tokens] * len(prompts), [])
    seconds = time.perf_counter() - start
    steps = max(len(g.token_ids) for g in generations)
    result["decode_ms_per_step"] = 1000 * seconds / steps
    result["decode_steps"] = steps

    agent = AgentLoop(engine, load_retriever(args.index), tokenizer, config)
    start = time.perf_counter()
    agent.rollout(questions)
    result["agent_tokens_per_s"] = agent.stats.generated_tokens / (time.perf_counter() - start)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (len(prompts), args.update_length))
    times = []
    for _ in range(args.update_repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = -logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    result["update_ms"] = 1000 * sorted(times[1:])[len(times[1:]) // 2]  # the median: page faults make it noisy
    return result


def measure(name: str, args: argparse.Namespace) -> dict:
    """Run one setting in a fresh process; returns its figures plus wall time and the other processes' load."""
    extra, threads = VARIANTS[name]
    unset = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(extra)
    command = [sys.executable, __file__, "--child", *(["--threads", str(threads)] if threads else [])]
    for option in ("model", "world", "index", "questions", "group", "max_new_tokens", "max_turns", "update_length",
                   "update_repeats"):  # fmt: skip
        command += [f"--{option}", str(getattr(args, option))]
    return run_child(command, args.timeout, env)


def run_child(command: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run a measuring child that prints its figures as JSON on its last line; adds wall time and the
    other processes' load (``other_cores``), or returns ``{"error": ...}``."""
    own_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    jiffies_before, start = busy_jiffies(), time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    wall = time.perf_counter() - start
    jiffies = busy_jiffies() - jiffies_before
    own_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["other_cores"] = max(0.0, jiffies / os.sysconf("SC_CLK_TCK") - own) / wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/sft-model"))
    parser.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    parser.add_argument("--index", type=Path, default=Path("runs/demo/index"))
    parser.add_argument("--questions", type=int, default=8, help="distinct questions")
    parser.add_argument("--group", type=int, default=4, help="rollouts per question (B = questions x group)")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="decode steps, and tokens per agent turn")
    parser.add_argument("--max_turns", type=int, default=2)
    parser.add_argument("--update_length", type=int, default=192, help="tokens per row of the update batch")
    parser.add_argument("--update_repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--loads", nargs="+", default=list(LOADS), choices=list(LOADS))
    parser.add_argument("--timeout", type=float, default=120, help="seconds per setting")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/thread_settings.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    rows = []
    for load in args.loads:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            for name in args.variants:
                rows.append({"load": load, "setting": name, **measure(name, args)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    report = {"machine": f"{os.cpu_count()} cores {platform.machine()}", "python": platform.python_version(),
              "batch": args.questions * args.group, "rows": rows}  # fmt: skip
    print("\n| load | setting | threads | decode ms/step | agent tokens/s | update ms | GEMM GFLOP/s | "
          "1,000 small matmuls ms | other cores |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['load']} | {r['setting']} | | {r['error']} | | | | | |")
            continue
        print(f"| {r['load']} | {r['setting']} | {r['threads']} | {r['decode_ms_per_step']:.1f} | "
              f"{r['agent_tokens_per_s']:.0f} | {r['update_ms']:.0f} | {r['gemm_gflops']:.1f} | "
              f"{r['small_matmuls_ms']:.0f} | {r['other_cores']:.2f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
