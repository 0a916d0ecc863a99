"""Greedy EM against pass@k and maj@k of a policy: how far reinforcing its own samples could move it.

Run after ``make demo`` (its warm start, index and RL pool by default):

    .venv/bin/python benchmarks/pass_at_k.py --questions 240 --k 8 --temperature 0.7
    .venv/bin/python benchmarks/pass_at_k.py --split world/test --k 16 --temperature 0.7

Each question is rolled out once greedily and ``k`` times sampled with the demo's rollout settings (the
agent loop with the torch engine and the rollout section of ``configs/synthetic/grpo-recycle.yaml``) and
scored with the EM reward. Three bounds follow:

- pass@k: some sample is right. Reinforcing right samples can at most reach it, and only by learning.
- maj@k: the most frequent sampled answer is right. Sharpening (raising the probability of what the policy
  already samples most, which is what GRPO does first) moves greedy EM towards maj@k, not towards pass@k.
- the split of greedy-wrong questions by the share of their samples that are right: a question whose samples
  are right less than half the time needs the policy to learn something new, not to become more certain.

``--split`` names a question file or a folder of them (``world/test``: every family). Prints lines for RESULTS.md.
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
from lit_search_rl.rewards import get_reward, normalize_answer  # noqa: E402
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig  # noqa: E402
from lit_search_rl.rollout.engine import SamplingConfig  # noqa: E402
from lit_search_rl.rollout.torch_engine import TorchEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# upper edges of the buckets of "share of samples right", for greedy-wrong questions
BUCKETS = ((0.0, "none"), (0.25, "under 1/4"), (0.5, "1/4 to 1/2"), (1.0, "half or more"))


def read_questions(path: Path, limit: int | None) -> list[dict]:
    """The questions of one file, or of every ``*.jsonl`` of a folder in name order; the first ``limit``."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"--split: no question file in {path}")
    rows = [json.loads(line) for file in files for line in file.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def majority(answers: list[str | None]) -> str | None:
    """The most frequent normalised answer (the first sampled among ties); None when no sample answered."""
    counts = collections.Counter(normalize_answer(a) for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def bucket(share: float) -> str:
    """The name of the bucket a share of right samples falls in (none, under 1/4, 1/4 to 1/2, half or more)."""
    if share == 0.0:
        return BUCKETS[0][1]
    return next(name for edge, name in BUCKETS[1:] if share < edge or edge == 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A demo run folder.")
    parser.add_argument("--model", default="sft-model", help="Policy folder inside --run.")
    parser.add_argument("--split", default="world/train.jsonl", help="Question file or folder inside --run.")
    parser.add_argument("--questions", type=int, default=None, help="The first N questions (default: all).")
    parser.add_argument("--k", type=int, default=8, help="Samples per question.")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.run / args.model)
    model = AutoModelForCausalLM.from_pretrained(args.run / args.model).eval()
    demo_config = yaml.safe_load((ROOT / "configs" / "synthetic" / "grpo-recycle.yaml").read_text())
    config = RolloutConfig(**demo_config["model"]["init_args"]["rollout"])  # the demo's GRPO rollouts
    retriever, em = load_retriever(args.run / "index"), get_reward("em")
    rows = read_questions(args.run / args.split, args.questions)

    def answers(sampling: SamplingConfig, repeats: int) -> list[list[str | None]]:
        loop = AgentLoop(TorchEngine(model, tokenizer, sampling), retriever, tokenizer, config)
        out = []
        for start in range(0, len(rows), 8):
            chunk = rows[start : start + 8]
            trajectories = loop.rollout([row["question"] for row in chunk for _ in range(repeats)])
            out += [[t.answer for t in trajectories[i * repeats : (i + 1) * repeats]] for i in range(len(chunk))]
        return out

    greedy = [a[0] for a in answers(SamplingConfig(temperature=0.0), 1)]
    sampled = answers(SamplingConfig(temperature=args.temperature, seed=args.seed), args.k)
    n = len(rows)
    greedy_right = [em(g, row["golden_answers"]) > 0 for g, row in zip(greedy, rows, strict=True)]
    shares = [sum(em(a, row["golden_answers"]) for a in s) / args.k for s, row in zip(sampled, rows, strict=True)]
    majority_right = [em(majority(s), row["golden_answers"]) > 0 for s, row in zip(sampled, rows, strict=True)]
    pass_at_k = sum(g or share > 0 for g, share in zip(greedy_right, shares, strict=True)) / n
    wrong = collections.Counter(bucket(share) for g, share in zip(greedy_right, shares, strict=True) if not g)
    print(
        f"| {args.model} | {args.split} | {n} | T {args.temperature}, k {args.k} | {sum(greedy_right) / n:.3f} | "
        f"{sum(shares) / n:.3f} | {sum(majority_right) / n:.3f} | {pass_at_k:.3f} | "
        + " / ".join(str(wrong[name]) for _, name in BUCKETS)
        + " |"
    )
    print(
        "columns: policy | questions | sampling | greedy EM | sample EM | maj@k | pass@k (greedy or a sample) | "
        "greedy-wrong questions whose samples are right: " + " / ".join(name for _, name in BUCKETS)
    )


if __name__ == "__main__":
    main()
