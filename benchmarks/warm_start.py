"""How fast does a warm-start recipe teach the tiny model to copy? One recipe per process, at a fixed wall time.

Trains a fresh tiny Qwen3 on expert trajectories of newly generated worlds (never the tested one), and
measures, against wall time, the copy accuracy and loss on held-out expert trajectories of the tested world
(information blocks as BM25's top 3 returns them at run time), with the project's own data pipeline and
loss functions. World generation and tokenisation count in the wall time; evaluation does not.

    .venv/bin/python benchmarks/warm_start.py --seconds 300 --layers 2 --out benchmarks/results/warm_start/x.json

Each option is one lever of the recipe; the JSON holds the curve and the settings.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_search_rl.data.sft import ExpertSet, LengthGroupedBatches, expert_examples, fresh_world_seed
from lit_search_rl.data.synthetic.schema import RELATIONS
from lit_search_rl.data.synthetic.world import WorldConfig, generate_world, write_world
from lit_search_rl.models.tiny import TinyModelConfig, build_model, train_tokenizer, world_texts
from lit_search_rl.rollout.encoding import pad_batch
from lit_search_rl.sft import copy_counts


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300, help="Training wall time (data generation included).")
    p.add_argument("--eval_every", type=float, default=30, help="Seconds of training between evaluations.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=0, help="MLP width; 0 for 3x hidden.")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--top_k", type=int, default=3, help="Passages per expert query in training (0: gold only).")
    p.add_argument("--gold_share", type=float, default=0.0, help="Share of the time budget trained on gold-only.")
    p.add_argument(
        "--pretrain_share",
        type=float,
        default=0.0,
        help="Share of the time budget on a language-modelling loss over packed passages of fresh worlds.",
    )
    p.add_argument(
        "--drills",
        action="store_true",
        help="Pretrain on passages each followed by its facts restated as the expert states them.",
    )
    p.add_argument("--eval_top_k", type=int, default=3, help="Passages per query in the held-out trajectories.")
    p.add_argument("--pretrain_length", type=int, default=256, help="Row length of the passage pretraining.")
    p.add_argument("--info_weight", type=float, default=0.0, help="LM loss weight on the information blocks.")
    p.add_argument("--fresh_size", type=int, default=500, help="Trajectories per fresh world.")
    p.add_argument("--max_hops", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def passage_rows(tokenizer, world, length: int, drills: bool = False) -> list[dict]:
    """The world's passages, tokenised one after another and cut into rows of ``length`` tokens (all trained).

    With ``drills`` each passage is followed by the facts it states, restated in a think block as the expert
    states them: a reading drill whose every name is copied from the passage just before it.
    """
    facts: dict[str, list[str]] = {}
    if drills:
        for (entity_id, relation), doc_ids in world.corpus.fact_docs.items():
            entity = world.entities.by_id[entity_id]
            statement = RELATIONS[relation].statement.format(x=entity.name, y=world.entities.value(entity, relation))
            for doc_id in doc_ids:
                facts.setdefault(doc_id, []).append(statement)
    ids: list[int] = []
    for passage in world.corpus.passages:
        text = passage.to_row()["contents"] + "\n"
        if passage.id in facts:
            text += f"<think> {' '.join(facts[passage.id])} </think>\n"
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
    return [{"input_ids": r, "loss_mask": [1] * length, "information_mask": [0] * length} for r in rows]


def losses(policy, batch: dict, info_weight: float) -> torch.Tensor:
    """Masked NLL of the expert's tokens (+ weighted NLL of the passages); logits only where a loss is taken."""
    hidden = policy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["input_ids"][:, 1:]
    own = batch["loss_mask"][:, 1:].bool()
    info = batch["information_mask"][:, 1:].bool() if info_weight > 0 else torch.zeros_like(own)
    where = own | info
    logits = policy.lm_head(hidden[:, :-1][where])  # (N, V)
    nll = F.cross_entropy(logits.float(), targets[where], reduction="none")
    own_sel, info_sel = own[where], info[where]
    loss = nll[own_sel].mean()
    if info_weight > 0 and info_sel.any():
        loss = loss + info_weight * nll[info_sel].mean()
    return loss


@torch.no_grad()
def evaluate(policy, batches: list[dict]) -> dict[str, float]:
    policy.eval()
    totals, nll_sum, n_tok = [0, 0, 0, 0], 0.0, 0
    for batch in batches:
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        counts = copy_counts(logits, batch["input_ids"], batch["copy_mask"])
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        mask = batch["loss_mask"][:, 1:].bool()
        nll = F.cross_entropy(logits[:, :-1][mask].float(), batch["input_ids"][:, 1:][mask], reduction="sum")
        nll_sum, n_tok = nll_sum + float(nll), n_tok + int(mask.sum())
    policy.train()
    right, copied, exact, trajectories = totals
    return {"copy_accuracy": right / copied, "copy_exact": exact / trajectories, "val_loss": nll_sum / n_tok}


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    test_config = WorldConfig(seed=args.seed, max_hops=args.max_hops, num_sft=300, num_train=900, num_val=20,
                              num_test=100)  # fmt: skip
    folder = Path(tempfile.mkdtemp()) / "world"
    write_world(generate_world(test_config), folder)
    tokenizer = train_tokenizer(world_texts(folder), args.vocab)
    shape = TinyModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                            num_heads=args.heads, num_kv_heads=args.kv_heads,
                            intermediate_size=args.intermediate or 3 * args.hidden, seed=args.seed)  # fmt: skip
    policy = build_model(shape, tokenizer)
    policy.train()
    held_out, _ = expert_examples(tokenizer, ExpertSet.from_folder(folder), args.eval_top_k, 3, 1024)
    random.Random(args.seed).shuffle(held_out)
    val = [pad_batch(held_out[i : i + 16], tokenizer.pad_token_id) for i in range(0, 64, 16)]

    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    curve, trained, steps, tokens, epoch = [], 0.0, 0, 0, 0
    # The cosine decay needs a step count; estimate it from the first epoch's pace, then keep it fixed.
    total_steps = None

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        if total_steps is None:
            return args.lr
        progress = min(1.0, (step - args.warmup) / max(1, total_steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    curve.append({"seconds": 0.0, "steps": 0, "tokens": 0, **evaluate(policy, val)})
    next_eval = args.eval_every
    done = False
    while not done:
        started = time.perf_counter()
        config = WorldConfig(**{**test_config.__dict__})
        config.seed = fresh_world_seed(args.seed, args.seed, epoch)
        config.num_sft, config.num_train, config.num_val, config.num_test = args.fresh_size, 0, 0, 0
        top_k = 0 if trained < (args.pretrain_share + args.gold_share) * args.seconds else args.top_k
        world = generate_world(config)
        if trained < args.pretrain_share * args.seconds:
            examples = passage_rows(tokenizer, world, args.pretrain_length, args.drills)
        else:
            examples, _ = expert_examples(tokenizer, ExpertSet.from_world(world), top_k, 3, 1024)
        trained += time.perf_counter() - started
        order = LengthGroupedBatches([len(e["input_ids"]) for e in examples], args.batch, f"{args.seed}-{epoch}")
        for indices in order:
            started = time.perf_counter()
            batch = pad_batch([examples[i] for i in indices], tokenizer.pad_token_id)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(steps)
            loss = losses(policy, batch, args.info_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            tokens += int(batch["attention_mask"].sum())
            trained += time.perf_counter() - started
            if total_steps is None and steps == 30:
                total_steps = int(steps * args.seconds / trained)
            if trained >= next_eval or trained >= args.seconds:
                point = {"seconds": round(trained, 1), "steps": steps, "tokens": tokens, "loss": float(loss.detach()),
                         **evaluate(policy, val)}  # fmt: skip
                curve.append(point)
                print(json.dumps(point), flush=True)
                next_eval += args.eval_every
            if trained >= args.seconds:
                done = True
                break
        epoch += 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params = sum(p.numel() for p in policy.parameters())
    args.out.write_text(json.dumps({"settings": settings, "parameters": params, "curve": curve}, indent=1) + "\n")


if __name__ == "__main__":
    main()
