"""vLLM's CPU build against the transformers engine, and the cost of weight sync, in one run.

Run inside the vLLM environment (``make vllm`` and ``make smollm2`` first):

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/vllm_engine.py

Both engines continue the same chat-templated questions of the demo world with SmolLM2-135M-
Instruct (float32, sampled at temperature 1 with the same seeds) and report generated tokens per
second. Then one GRPO-like step is timed piece by piece: rollouts with vLLM, a forward/backward
of the generated sequences, an AdamW step, and ``sync_weights`` (the whole policy streamed into
vLLM), so the sync's share of the step is measured, not assumed. Prints a Markdown table and
writes ``benchmarks/results/vllm_engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from lit_search_rl.callbacks.weight_sync import sync_weights
from lit_search_rl.data.qa import load_qa
from lit_search_rl.policy import load_policy, load_tokenizer
from lit_search_rl.rollout.encoding import encode_prompt
from lit_search_rl.rollout.engine import GenerationEngine, SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.vllm_engine import VLLMConfig, VLLMEngine


def _questions(path: Path, n: int) -> list[str]:
    if path.is_file():
        return [r.question for r in load_qa(path)][:n]
    return [f"Which company produced film number {i}, and where is it based?" for i in range(n)]


def _tokens_per_second(engine: GenerationEngine, prompts: list[list[int]], new_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    generations = engine.generate(prompts, [new_tokens] * len(prompts), [])
    seconds = time.perf_counter() - start
    tokens = sum(len(g.token_ids) for g in generations)
    return tokens / seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/smollm2-135m-instruct"))
    parser.add_argument("--questions", type=Path, default=Path("runs/demo/world/test/chain.jsonl"))
    parser.add_argument("--batch", type=int, default=16, help="Trajectories per generate call (B * K).")
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/vllm_engine.json"))
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"--model: {args.model} is not a model folder (run `make smollm2` first)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    tokenizer = load_tokenizer(str(args.model))
    prompts = [encode_prompt(tokenizer, q, 3) for q in _questions(args.questions, args.batch)]
    policy = load_policy(str(args.model), "float32")
    start = time.perf_counter()
    vllm_engine = VLLMEngine(str(args.model), VLLMConfig(dtype="float32", enforce_eager=True, max_num_seqs=64),
                             max_model_len=1024)  # fmt: skip
    startup = time.perf_counter() - start

    rates: dict[str, list[float]] = {"transformers": [], "vllm-cpu": []}
    for repeat in range(args.repeats):  # alternate, so drift on a noisy machine hits both alike
        sampling = SamplingConfig(temperature=1.0, seed=repeat)
        vllm_engine.sampling = sampling
        rates["vllm-cpu"].append(_tokens_per_second(vllm_engine, prompts, args.new_tokens)[0])
        rates["transformers"].append(_tokens_per_second(HFEngine(policy, tokenizer, sampling), prompts,
                                                        args.new_tokens)[0])  # fmt: skip

    # One GRPO-like step: rollouts (vLLM), forward/backward, optimizer, weight sync.
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    steps = []
    for repeat in range(args.repeats):
        timing = {}
        start = time.perf_counter()
        vllm_engine.sampling = SamplingConfig(temperature=1.0, seed=100 + repeat)
        generations = vllm_engine.generate(prompts, [args.new_tokens] * len(prompts), [])
        timing["generate"] = time.perf_counter() - start
        start = time.perf_counter()
        for prompt, generation in zip(prompts, generations, strict=True):
            ids = torch.tensor([list(prompt) + generation.token_ids])
            policy(input_ids=ids, labels=ids).loss.div(len(prompts)).backward()
        timing["forward/backward"] = time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        timing["optimizer"] = time.perf_counter() - start
        timing["weight sync"] = sync_weights(policy, vllm_engine)
        timing["step"] = sum(timing.values())
        steps.append(timing)

    median = {key: statistics.median(step[key] for step in steps) for key in steps[0]}
    params = sum(p.numel() for p in policy.parameters())
    result = {
        "model": str(args.model), "parameters": params, "batch": args.batch, "new_tokens": args.new_tokens,
        "vllm_startup_seconds": startup,
        "tokens_per_second": {name: statistics.median(values) for name, values in rates.items()},
        "step_seconds": median, "weight_sync_share": median["weight sync"] / median["step"],
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")

    tps = result["tokens_per_second"]
    print(f"\n{params / 1e6:.1f}M parameters, {args.batch} prompts x {args.new_tokens} new tokens, "
          f"median of {args.repeats}; vLLM start-up {startup:.1f} s\n")  # fmt: skip
    print("| engine | generated tokens/s |\n| --- | ---: |")
    for name, value in tps.items():
        print(f"| {name} | {value:.0f} |")
    print(f"\nvllm-cpu / transformers: {tps['vllm-cpu'] / tps['transformers']:.2f}x\n")
    print("| part of a step | seconds | share |\n| --- | ---: | ---: |")
    for key in ("generate", "forward/backward", "optimizer", "weight sync", "step"):
        print(f"| {key} | {median[key]:.3f} | {median[key] / median['step']:.1%} |")


if __name__ == "__main__":
    main()
