"""Batched agent loop vs one trajectory at a time, with the tiny model on the CPU.

Run: ``.venv/bin/python benchmarks/rollout_speed.py --model runs/demo/sft-model`` after
``make demo`` (and, for a model that searches, the SFT warm start). Measures generated tokens
per second of both ways on the same questions in one run, and the share of rollout time spent
in retrieval (BM25 over the world's corpus, in process).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from lit_search_rl.io import read_jsonl
from lit_search_rl.policy import load_policy, load_tokenizer
from lit_search_rl.retrieval.index import build_index, load_retriever
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig
from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine


def run(agent: AgentLoop, questions: list[str], batched: bool) -> dict:
    start = time.perf_counter()
    generate = retrieve = tokens = 0.0
    batches = [questions] if batched else [[q] for q in questions]
    trajectories = []
    for batch in batches:
        trajectories += agent.rollout(batch)
        generate += agent.stats.generate_seconds
        retrieve += agent.stats.retrieve_seconds
        tokens += agent.stats.generated_tokens
    total = time.perf_counter() - start
    searches = sum(t.num_searches for t in trajectories)
    finish = {
        r: sum(t.finish_reason == r for t in trajectories) for r in ("answered", "max_turns", "length", "invalid")
    }
    return {"seconds": total, "tokens": int(tokens), "tokens_per_s": tokens / total, "retrieve_share": retrieve / total,
            "generate_share": generate / total, "searches": searches, "finish": finish}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    parser.add_argument("--model", type=Path, default=Path("runs/demo/tiny-model"))
    parser.add_argument("--questions", type=int, default=8, help="distinct questions (B)")
    parser.add_argument("--group", type=int, default=4, help="rollouts per question (K)")
    parser.add_argument("--max_new_tokens_per_turn", type=int, default=96)
    parser.add_argument("--max_turns", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rollout_speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(args.model))
    model = load_policy(str(args.model))
    rows = list(read_jsonl(args.world / "train.jsonl"))[: args.questions]
    questions = [r["question"] for r in rows for _ in range(args.group)]
    config = RolloutConfig(max_turns=args.max_turns, max_new_tokens_per_turn=args.max_new_tokens_per_turn)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(args.world / "corpus.jsonl", Path(tmp) / "bm25", "bm25", progress=False)
        retriever = load_retriever(Path(tmp) / "bm25")
        agent = AgentLoop(HFEngine(model, tokenizer, SamplingConfig(temperature=1.0, seed=0)), retriever, tokenizer,
                          config)  # fmt: skip
        agent.rollout(questions[:2])  # warm-up
        results = {"batched": run(agent, questions, batched=True), "sequential": run(agent, questions, batched=False)}
    speedup = results["batched"]["tokens_per_s"] / results["sequential"]["tokens_per_s"]
    report = {"model": str(args.model), "trajectories": len(questions), "threads": torch.get_num_threads(),
              "speedup": speedup, **results}  # fmt: skip
    print(json.dumps(report, indent=2))
    print("\n| mode | trajectories | seconds | generated tokens | tokens/s | retrieval share | searches |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, r in results.items():
        print(f"| {mode} | {len(questions)} | {r['seconds']:.1f} | {r['tokens']} | {r['tokens_per_s']:.0f} | "
              f"{100 * r['retrieve_share']:.2f}% | {r['searches']} |")  # fmt: skip
    print(f"\nbatched / sequential tokens per second: {speedup:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
