"""Both rollout engines on one CUDA GPU: the same greedy trajectories, exact logprobs, and their speed.

Run after ``make demo`` on a machine with a GPU: ``python benchmarks/cuda_engines.py [--out FILE]``. The demo's
SFT model generates with the demo's rollout settings (``configs/synthetic/grpo-recycle.yaml``):

- ``greedy_same_trajectories``: 32 questions rolled out greedily by ``HFEngine`` and ``TorchEngine``; how many
  trajectories are the same to the last token;
- ``max_logprob_diff_vs_teacher_forced``: the largest gap between ``TorchEngine``'s sampled logprobs and a
  teacher-forced forward of the finished trajectories (the rollout guarantee is 1e-4);
- ``tokens_per_s_B32`` / ``B64``: generated tokens per second of four agent-loop calls of B trajectories per
  engine, interleaved, on the same questions and seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from lit_search_rl.io import read_jsonl
from lit_search_rl.policy import load_policy, load_tokenizer
from lit_search_rl.retrieval.index import load_retriever
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig
from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.torch_engine import TorchEngine

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"hf": HFEngine, "torch": TorchEngine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A demo run folder.")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures.")
    args = parser.parse_args()
    settings = yaml.safe_load((ROOT / "configs" / "synthetic" / "grpo-recycle.yaml").read_text())
    config = RolloutConfig(**settings["model"]["init_args"]["rollout"])
    tokenizer = load_tokenizer(args.run / "sft-model")
    model = load_policy(args.run / "sft-model").to("cuda").eval()
    rows = list(read_jsonl(args.run / "world" / "train.jsonl"))
    retriever = load_retriever(args.run / "index")

    def loop(name: str, sampling: SamplingConfig) -> AgentLoop:
        return AgentLoop(ENGINES[name](model, tokenizer, sampling), retriever, tokenizer, config)

    questions = [rows[i]["question"] for i in range(32)]
    hf, fast = (loop(name, SamplingConfig(temperature=0.0)).rollout(questions) for name in ENGINES)
    same = sum(a.response_ids == b.response_ids for a, b in zip(hf, fast, strict=True))
    out: dict = {"greedy_same_trajectories": f"{same} of {len(questions)}"}
    worst = 0.0
    for t in loop("torch", SamplingConfig(temperature=1.0, seed=0)).rollout(questions):
        ids = torch.tensor([t.prompt_ids + t.response_ids], device="cuda")
        with torch.no_grad():
            logp = model(ids).logits.float().log_softmax(-1)[0, len(t.prompt_ids) - 1 : -1]
        forced = logp.gather(-1, torch.tensor(t.response_ids, device="cuda")[:, None])[:, 0].cpu()
        mine = torch.tensor(t.loss_mask).bool()
        worst = max(worst, (forced[mine] - torch.tensor(t.logprobs)[mine]).abs().max().item())
    out["max_logprob_diff_vs_teacher_forced"] = worst
    for batch in (32, 64):
        tokens, seconds = dict.fromkeys(ENGINES, 0), dict.fromkeys(ENGINES, 0.0)
        for call in range(4):
            qs = [rows[(call * batch // 4 + i) % len(rows)]["question"] for i in range(batch // 4) for _ in range(4)]
            for name in ENGINES:
                agent = loop(name, SamplingConfig(temperature=1.0, seed=call))
                torch.cuda.synchronize()
                start = time.perf_counter()
                agent.rollout(qs)
                torch.cuda.synchronize()
                seconds[name] += time.perf_counter() - start
                tokens[name] += agent.stats.generated_tokens
        out[f"tokens_per_s_B{batch}"] = {name: round(tokens[name] / seconds[name]) for name in ENGINES}
    print(json.dumps(out))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
