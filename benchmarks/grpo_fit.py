"""GRPO on a handful of the RL pool's questions, visited many times: does it fit them, and does the test set follow?

Run after ``make demo``:

    .venv/bin/python benchmarks/grpo_fit.py --questions 32 --steps 100 --variant lr1e-4=1e-4 --variant lr5e-4=5e-4

Each variant is the demo's GRPO stage (``lit_search_rl.tools.demo.train_grpo``) on the first ``--questions``
questions of the RL pool only (groups of 8, 4 questions a step, no oversampling, the learning rate named,
then any further ``fit`` overrides, comma-separated: ``--variant lora=1e-3,--model.init_args.lora_rank=8``),
so every question is drawn again and again. Then the warm start and each trained policy answer those
questions greedily, searching the demo's index and with a retriever that returns nothing (whether right
answers need the passages or were learnt by heart), and the test set as the demo tests it. Prints one row
per policy for RESULTS.md and writes them to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from lit_search_rl.threads import configure_threads

configure_threads()

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from lit_search_rl.retrieval.base import EMPTY_RETRIEVER  # noqa: E402
from lit_search_rl.retrieval.open import open_retriever  # noqa: E402
from lit_search_rl.rewards import get_reward  # noqa: E402
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig  # noqa: E402
from lit_search_rl.rollout.engine import SamplingConfig  # noqa: E402
from lit_search_rl.rollout.torch_engine import TorchEngine  # noqa: E402
from lit_search_rl.tools.demo import FAMILIES, DemoSettings, evaluate_policy, train_grpo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def greedy_em(policy: Path, questions: list[dict], retriever: str) -> float:
    """Greedy EM of ``policy`` on ``questions`` with the demo's rollout settings, searching ``retriever``."""
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    settings = yaml.safe_load((ROOT / "configs" / "synthetic" / "grpo-recycle.yaml").read_text())
    config = RolloutConfig(**settings["model"]["init_args"]["rollout"])
    engine = TorchEngine(model, tokenizer, SamplingConfig(temperature=0.0))
    loop = AgentLoop(engine, open_retriever(retriever), tokenizer, config)
    em = get_reward("em")
    trajectories = loop.rollout([q["question"] for q in questions])
    return sum(em(t.answer, q["golden_answers"]) for t, q in zip(trajectories, questions, strict=True)) / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A finished demo run folder.")
    parser.add_argument("--seed", type=int, default=0, help="The seed the demo run used.")
    parser.add_argument("--questions", type=int, default=32, help="The first N questions of the RL pool.")
    parser.add_argument("--steps", type=int, default=100, help="Rollout steps of each variant.")
    parser.add_argument("--variant", action="append", default=[], help="NAME=LEARNING_RATE[,OVERRIDE...]")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/grpo_fit.json"))
    args = parser.parse_args()
    lines = (args.run / "world" / "train.jsonl").read_text().splitlines()[: args.questions]
    subset = args.run / "settings" / f"fit{args.questions}.jsonl"
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("\n".join(lines) + "\n")
    questions = [json.loads(line) for line in lines]
    policies = {"warm start": (args.run / "sft-model", None, None)}
    for variant in args.variant:
        name, settings = variant.split("=", 1)
        rate, *overrides = settings.split(",")
        start = time.perf_counter()
        cli = train_grpo(args.run, args.seed, DemoSettings(), name=f"fit-{name}", extra=[
            f"--data.init_args.train={subset}", f"--trainer.limit_train_batches={args.steps}",
            f"--trainer.val_check_interval={args.steps}", "--trainer.num_sanity_val_steps=0",
            "--model.init_args.group_size=8", "--model.init_args.oversample=1",
            f"--model.init_args.optimizer.learning_rate={rate}", *overrides,
        ])  # fmt: skip
        policies[name] = (args.run / f"fit-{name}-model", cli.trainer.global_step, time.perf_counter() - start)
    rows = []
    for name, (policy, steps, seconds) in policies.items():
        test = evaluate_policy(args.run, policy, f"fit-test-{name}", args.seed).summary
        rows.append({
            "policy": name, "optimizer_steps": steps, "seconds": seconds,
            "trained_questions_em": greedy_em(policy, questions, str(args.run / "index")),
            "trained_questions_em_no_search": greedy_em(policy, questions, EMPTY_RETRIEVER),
            "test_em": {family: test[family]["em"] for family in (*FAMILIES, "avg")},
        })  # fmt: skip
        r = rows[-1]
        test = " / ".join(f"{r['test_em'][f]:.3f}" for f in (*FAMILIES, "avg"))
        trained = f"{r['trained_questions_em']:.3f} | {r['trained_questions_em_no_search']:.3f}"
        print(f"| {name} | {steps or ''} | {trained} | {test} |", flush=True)
    print("columns: policy | optimizer steps | greedy EM on the trained questions | the same without passages | "
          "test EM chain / iterative / comparison / avg")  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    report = {"questions": args.questions, "steps": args.steps, "rows": rows}
    args.results.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
