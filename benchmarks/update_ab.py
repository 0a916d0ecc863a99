"""GRPO's update of this tree against an earlier commit's, alternated in one process, on the demo's rollouts.

Run after ``make demo``: ``.venv/bin/python benchmarks/update_ab.py --against HEAD~1 --repeats 6``. The module
``lit_search_rl/grpo/update.py`` of ``--against`` is read with ``git show`` and loaded beside this tree's. The
policy rolls out a batch as the demo's GRPO stage does (``grpo-recycle.yaml``: B questions of K trajectories,
its rollout and sampling settings, the EM reward), and each repetition times both updates on it (building the
batch, then the micro-batched forward and backward of its loss), alternating which goes first, so that a slow
spell of a shared machine hits both alike. Checks that both give the same gradient; prints the median seconds,
their ratio, and the share of the batch's positions that are padding. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
import yaml

from lit_search_rl.threads import configure_threads

configure_threads()

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_ab import load_source  # noqa: E402

from lit_search_rl.grpo import update as this_update  # noqa: E402
from lit_search_rl.grpo.config import LossConfig  # noqa: E402
from lit_search_rl.io import read_jsonl  # noqa: E402
from lit_search_rl.policy import load_policy, load_tokenizer  # noqa: E402
from lit_search_rl.retrieval.index import load_retriever  # noqa: E402
from lit_search_rl.rewards import exact_match  # noqa: E402
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig  # noqa: E402
from lit_search_rl.rollout.engine import SamplingConfig  # noqa: E402
from lit_search_rl.rollout.torch_engine import TorchEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def update_at(revision: str) -> ModuleType:
    """``lit_search_rl.grpo.update`` as it stood at ``revision``, loaded under a name of its own."""
    shown = subprocess.run(["git", "show", f"{revision}:lit_search_rl/grpo/update.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True)  # fmt: skip
    return load_source("earlier_update", shown.stdout, Path(tempfile.mkdtemp()))


def timed_update(module: ModuleType, policy, groups, rewards, chosen, pad_id: int, micro: int, horizon: int):
    """Seconds of one update of ``module`` (batch building, forward and backward), its gradient, its batch."""
    policy.zero_grad(set_to_none=True)
    start = time.perf_counter()
    batch = module.make_update_batch(groups, rewards, chosen, pad_id)
    module.accumulate_gradients(policy, batch, LossConfig(), micro, horizon)
    seconds = time.perf_counter() - start
    gradient = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    return seconds, gradient, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A demo run folder.")
    parser.add_argument("--against", default="HEAD", help="The git revision of the earlier update.")
    parser.add_argument("--repeats", type=int, default=6, help="Repetitions (each update once per repetition).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "update_ab.json")
    args = parser.parse_args()
    init = yaml.safe_load((ROOT / "configs" / "synthetic" / "grpo-recycle.yaml").read_text())["model"]["init_args"]
    config, k, b = RolloutConfig(**init["rollout"]), init["group_size"], init["batch_size"]
    tokenizer, policy = load_tokenizer(args.run / "sft-model"), load_policy(args.run / "sft-model")
    rows, retriever = list(read_jsonl(args.run / "world" / "train.jsonl")), load_retriever(args.run / "index")
    engine = TorchEngine(policy, tokenizer, SamplingConfig(temperature=init["sampling"]["temperature"], seed=0))
    questions = rows[: 2 * b]  # the demo's 2B candidates; the update trains on at most B groups with signal
    flat = AgentLoop(engine, retriever, tokenizer, config).rollout([q["question"] for q in questions for _ in range(k)])
    groups = [flat[i * k : (i + 1) * k] for i in range(len(questions))]
    rewards = [[exact_match(t.answer, q["golden_answers"]) for t in g] for g, q in zip(groups, questions, strict=True)]
    chosen = [i for i, r in enumerate(rewards) if len(set(r)) > 1][:b] or list(range(b))
    policy.train()
    earlier, pad_id = update_at(args.against), tokenizer.pad_token_id
    runs = {args.against: earlier, "this tree": this_update}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    batches = {}
    for rep in range(args.repeats):
        gradients = {}
        for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
            s, gradients[name], batches[name] = timed_update(
                runs[name], policy, groups, rewards, chosen, pad_id, init["micro_batch_size"], config.max_total_tokens
            )
            seconds[name].append(s)
        old, new = gradients.values()
        gap = float((old - new).abs().max() / old.abs().max())
        assert gap < 1e-4, f"the two updates' gradients differ (max relative gap {gap:.2e})"
    batch = batches["this tree"]
    padding = 1 - float(batch.attention_mask.sum()) / batch.attention_mask.numel()
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    ratios = [o / n for o, n in zip(seconds[args.against], seconds["this tree"], strict=True)]
    for name, values in seconds.items():
        print(f"{name}: median {medians[name]:.3f} s ({', '.join(f'{v:.3f}' for v in values)})")
    print(
        f"{args.against} / this tree: median {statistics.median(ratios):.2f}x; {len(chosen)} groups of {k}, "
        f"{batch.input_ids.shape[1]} positions a row, padding {padding:.0%} of the batch; gradients agree"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"against": args.against, "seconds": seconds, "median_ratio": statistics.median(ratios),
              "groups": len(chosen), "group_size": k, "padding": padding}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
