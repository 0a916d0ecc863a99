"""lit-search-rl's GRPO next to TRL's ``GRPOTrainer``: same model, task, batch and group size, one run.

Run after ``make demo``, with TRL installed as a benchmark-only dependency:

    make bench-deps && .venv/bin/python benchmarks/trl_side_by_side.py

The task is single-turn and without search: the demo's SFT model gets one turn per training
question and is rewarded 1 when that turn gives an ``<answer>`` (the tiny model rarely gets a
question right without searching, so exact match would leave every group without signal and
both losses at zero). Both trainers
see the same prompt ids (our chat-templated prompt), B questions x K samples per step, the same
completion budget, temperature 1, learning rate and no KL.

1. First-batch loss: inside TRL's first training step, the loss TRL computes is compared with
   ours (``lit_search_rl.grpo.losses.policy_loss``) on the very same completions, advantages and
   model state: ``token-mean`` for TRL's ``dapo`` loss and ``seq-mean-token-mean`` for ``grpo``.
2. Throughput and memory: each trainer runs alone in a child process for the same number of
   steps; tokens per second counts prompt and completion tokens of every sampled sequence over
   the trainer's wall time, and peak RSS comes from the child's ``wait4`` resource usage.

Prints Markdown tables and writes ``benchmarks/results/trl_side_by_side.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prompts(run: Path, n: int) -> tuple[list[str], list[list[str]], object]:
    from lit_search_rl.data.qa import load_qa
    from lit_search_rl.policy import load_tokenizer
    from lit_search_rl.rollout.encoding import encode_prompt

    tokenizer = load_tokenizer(str(run / "sft-model"))
    records = load_qa(run / "world" / "train.jsonl")[:n]
    texts = [tokenizer.decode(encode_prompt(tokenizer, r.question, 3)) for r in records]
    return texts, [list(r.golden_answers) for r in records], tokenizer


def answered(answer: str | None, golden_answers) -> float:
    """The task's reward (our signature): 1 when the turn gave an answer."""
    return float(answer is not None)


def _trl_reward(completions: list[str], **_) -> list[float]:
    from lit_search_rl.rollout.actions import extract_answer

    return [answered(extract_answer(c), None) for c in completions]


def run_trl(args: argparse.Namespace, probe: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from lit_search_rl.grpo.losses import policy_loss
    from lit_search_rl.policy import load_policy

    texts, golden, tokenizer = _prompts(args.run, args.batch * args.steps)
    dataset = Dataset.from_dict({"prompt": texts, "golden": golden})
    agg = {"dapo": "token-mean", "grpo": "seq-mean-token-mean"}[args.loss_type]

    class Probe(GRPOTrainer):
        first: tuple[float, float] | None = None

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            if probe and self.first is None:
                with torch.no_grad():
                    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
                    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
                    width = inputs["completion_ids"].size(1)
                    logits = model(input_ids=ids, attention_mask=attention).logits[:, -width - 1 : -1]
                    logp = logits.float().log_softmax(-1).gather(-1, inputs["completion_ids"][..., None])[..., 0]
                    ours, _ = policy_loss(logp, logp, inputs["advantages"], inputs["completion_mask"], agg=agg)
                self.first = (float(loss), float(ours))
            return loss

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, max_steps=1 if probe else args.steps, per_device_train_batch_size=args.batch * args.group,
        num_generations=args.group, steps_per_generation=1, max_completion_length=args.new_tokens,
        temperature=1.0, learning_rate=args.learning_rate, beta=0.0, loss_type=args.loss_type, seed=0,
        epsilon=0.2, scale_rewards="group", disable_dropout=True,
    )  # fmt: skip
    trainer = Probe(model=load_policy(str(args.run / "sft-model")), reward_funcs=_trl_reward, args=config,
                    train_dataset=dataset, processing_class=tokenizer)  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if probe:
        return {"trl_loss": trainer.first[0], "our_loss": trainer.first[1]}
    return {"seconds": seconds, "tokens": float(trainer.state.num_input_tokens_seen)}


def run_ours(args: argparse.Namespace) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_search_rl.lightning_cli import SearchRLCLI
    from lit_search_rl.rewards import register_reward

    register_reward("answered", answered)
    texts, _, tokenizer = _prompts(args.run, 1)
    prompt_tokens = len(tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    with tempfile.TemporaryDirectory() as logs:
        start = time.perf_counter()
        cli = SearchRLCLI(args=[
            "fit", "--config", str(ROOT / "configs/synthetic/grpo.yaml"), "--trainer.enable_progress_bar=false",
            f"--trainer.limit_train_batches={args.steps}", f"--trainer.logger.init_args.save_dir={logs}",
            f"--model.init_args.model={args.run / 'sft-model'}", f"--model.init_args.retriever={args.run / 'index'}",
            f"--model.init_args.group_size={args.group}", f"--model.init_args.batch_size={args.batch}",
            "--model.init_args.oversample=1", "--model.init_args.reward=answered",
            f"--model.init_args.micro_batch_size={args.batch * args.group}",
            f"--model.init_args.loss.loss_agg={ {'dapo': 'token-mean', 'grpo': 'seq-mean-token-mean'}[args.loss_type]}",
            f"--model.init_args.optimizer.learning_rate={args.learning_rate}", "--model.init_args.rollout.max_turns=1",
            f"--model.init_args.rollout.max_new_tokens_per_turn={args.new_tokens}", "--model.init_args.export_dir=null",
            f"--data.init_args.train={args.run / 'world' / 'train.jsonl'}", "--data.init_args.val_sets=[]",
            "--data.init_args.test_sets=[]", "--trainer.limit_val_batches=0",
        ])  # fmt: skip
        seconds = time.perf_counter() - start
        events = EventAccumulator(str(Path(cli.trainer.log_dir)))
        events.Reload()
        lengths = [e.value for e in events.Scalars("train/response_length")]
        step_seconds = sum(e.value for e in events.Scalars("train/step_time"))
    per_step = args.batch * args.group
    tokens = sum(per_step * (prompt_tokens + length) for length in lengths)
    return {"seconds": step_seconds, "wall_seconds": seconds, "tokens": tokens}


def child(framework: str, argv: list[str]) -> tuple[dict, float]:
    """Run one framework in a child process; (its result, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, *argv, "--only", framework, "--out", out.name]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{framework} failed:\n{process.stderr.read().decode()[-4000:]}")
        return json.loads(Path(out.name).read_text()), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="A `make demo` run folder.")
    parser.add_argument("--batch", type=int, default=4, help="B: questions per step.")
    parser.add_argument("--group", type=int, default=4, help="K: samples per question.")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--loss_type", choices=["dapo", "grpo"], default="dapo")
    parser.add_argument("--only", choices=["trl", "ours", "probe"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/trl_side_by_side.json"))
    args = parser.parse_args()
    if args.only:  # a child: one framework, result to --out
        result = {"trl": lambda: run_trl(args, False), "ours": lambda: run_ours(args),
                  "probe": lambda: run_trl(args, True)}[args.only]()  # fmt: skip
        args.out.write_text(json.dumps(result))
        return
    argv = [f"--run={args.run}", f"--batch={args.batch}", f"--group={args.group}", f"--steps={args.steps}",
            f"--new_tokens={args.new_tokens}", f"--learning_rate={args.learning_rate}",
            f"--loss_type={args.loss_type}"]  # fmt: skip
    probe, _ = child("probe", argv)
    results = {"probe": probe, "settings": vars(args) | {"run": str(args.run), "results": str(args.results)}}
    for framework in ("ours", "trl"):
        measured, rss = child(framework, argv)
        results[framework] = measured | {
            "peak_rss_mib": rss,
            "tokens_per_second": measured["tokens"] / measured["seconds"],
        }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, default=str) + "\n")

    diff = abs(probe["trl_loss"] - probe["our_loss"])
    print(f"\nfirst-batch loss ({args.loss_type}): TRL {probe['trl_loss']:.8f}, ours {probe['our_loss']:.8f}, "
          f"|difference| {diff:.2e}\n")  # fmt: skip
    print("| trainer | tokens/s | peak RSS |\n| --- | ---: | ---: |")
    for framework, label in (("ours", "lit-search-rl GRPOModule"), ("trl", "TRL GRPOTrainer")):
        r = results[framework]
        print(f"| {label} | {r['tokens_per_second']:.0f} | {r['peak_rss_mib']:.0f} MiB |")
    ratio = results["ours"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
    print(f"\nlit-search-rl / TRL tokens per second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
