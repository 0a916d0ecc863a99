"""Greedy EM against pass@k of a policy: how many questions its own samples already answer.

Run after ``make demo`` (its warm start, index and RL pool by default):

    .venv/bin/python benchmarks/pass_at_k.py --questions 240 --k 8 --temperature 0.7

Each question is rolled out once greedily and ``k`` times sampled with the demo's rollout settings (the
agent loop with the torch engine and the rollout section of ``configs/synthetic/grpo-recycle.yaml``) and
scored with the EM reward. The split of questions into greedy right or wrong and some sample right or none says how far
reinforcing the policy's own right samples could move greedy EM. Prints one line for RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import yaml

from lit_search_rl.threads import configure_threads

configure_threads()

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from lit_search_rl.retrieval.index import load_retriever  # noqa: E402
from lit_search_rl.rewards import get_reward  # noqa: E402
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig  # noqa: E402
from lit_search_rl.rollout.engine import SamplingConfig  # noqa: E402
from lit_search_rl.rollout.torch_engine import TorchEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A demo run folder.")
    parser.add_argument("--model", default="sft-model", help="Policy folder inside --run.")
    parser.add_argument("--split", default="world/train.jsonl", help="Question file inside --run.")
    parser.add_argument("--questions", type=int, default=240, help="The first N questions of the file.")
    parser.add_argument("--k", type=int, default=8, help="Samples per question.")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.run / args.model)
    model = AutoModelForCausalLM.from_pretrained(args.run / args.model).eval()
    demo_config = yaml.safe_load((ROOT / "configs" / "synthetic" / "grpo-recycle.yaml").read_text())
    config = RolloutConfig(**demo_config["model"]["init_args"]["rollout"])  # the demo's GRPO rollouts
    retriever, em = load_retriever(args.run / "index"), get_reward("em")
    rows = [json.loads(line) for line in (args.run / args.split).read_text().splitlines()[: args.questions]]

    def scores(sampling: SamplingConfig, repeats: int) -> list[list[float]]:
        loop = AgentLoop(TorchEngine(model, tokenizer, sampling), retriever, tokenizer, config)
        out = []
        for start in range(0, len(rows), 8):
            chunk = rows[start : start + 8]
            trajectories = loop.rollout([row["question"] for row in chunk for _ in range(repeats)])
            for i, row in enumerate(chunk):
                out.append([em(t.answer, row["golden_answers"]) for t in trajectories[i * repeats : (i + 1) * repeats]])
        return out

    greedy = scores(SamplingConfig(temperature=0.0), 1)
    sampled = scores(SamplingConfig(temperature=args.temperature, seed=args.seed), args.k)
    # (greedy right, some sample right) -> questions
    split = collections.Counter((g[0] > 0, max(s) > 0) for g, s in zip(greedy, sampled, strict=True))
    n = len(rows)
    greedy_em, sample_em = sum(g[0] for g in greedy) / n, sum(map(sum, sampled)) / (n * args.k)
    pass_at_k = (n - split[False, False]) / n
    rescued, wrong = split[False, True], split[False, True] + split[False, False]
    print(f"| {args.model} | {n} | T {args.temperature} | {greedy_em:.3f} | {sample_em:.3f} | {pass_at_k:.3f} | "
          f"{rescued} of {wrong} |")  # fmt: skip
    print(
        "columns: policy | questions | sampling | greedy EM | sample EM | pass@k (greedy or a sample) | "
        "greedy-wrong questions with a right sample"
    )


if __name__ == "__main__":
    main()
