"""How many steps does the tiny Qwen3 need to learn to copy by content (an induction head), from scratch?

Each row of a batch is random tokens in which short spans of the first half reappear at random places in the
second half; the loss is taken only on the tokens of a repeat after its first, which a model predicts only
by finding the earlier occurrence of the token before and copying what followed it. Random offsets rule out
the positional shortcut a fixed-offset repeat allows (``--max_gap`` puts each repeat right after its source,
at most that many tokens later, to measure the shortcut). The model is the project's tiny Qwen3 (RoPE,
QK-norm, tied embeddings); one run per process, printing accuracy on the repeated tokens against steps.

    .venv/bin/python benchmarks/induction_drill.py --steps 3000 --length 64 --spans 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=1024, help="Token ids drawn (as the warm-start benchmark's tokenizer).")
    p.add_argument("--length", type=int, default=256, help="Tokens per row.")
    p.add_argument("--span", type=int, default=6, help="Tokens per repeated span.")
    p.add_argument("--spans", type=int, default=8, help="Repeated spans per row.")
    p.add_argument("--max_gap", type=int, default=-1, help="Repeat each span 0..max_gap tokens after it (-1: random).")
    p.add_argument("--gap", type=int, default=4, help="max_gap of the near repeats of --near_steps and --near_share.")
    p.add_argument("--near_steps", type=int, default=0, help="Steps of near repeats before the random-offset rows.")
    p.add_argument("--near_share", type=float, default=0.0, help="Share of each batch's rows that are near repeats.")
    p.add_argument("--pairs_share", type=float, default=0.0,
                   help="Share of each batch's rows made of alternating pairs (a b a b ...), which a previous-token "
                   "head solves by itself.")  # fmt: skip
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rope_theta", type=float, default=1e6, help="Qwen3's default.")
    p.add_argument("--init_std", type=float, default=0.02)
    p.add_argument(
        "--arch",
        choices=("qwen3", "llama"),
        default="qwen3",
        help="qwen3 normalises each query and key head (QK-norm); llama is the same decoder without it.",
    )
    p.add_argument(
        "--halves",
        choices=("none", "same", "shuffled"),
        default="none",
        help="Each row's second half repeats its first half: as it is (same: a fixed offset, solvable by position) "
        "or as its --span chunks in a random order (shuffled: by content only).",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps the default.")
    p.add_argument("--every", type=int, default=25, help="Steps between printed points.")
    return p.parse_args()


def far_batch(args: argparse.Namespace, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids whose first-half spans reappear at random places of the second half, and the (B, L) mask of the
    tokens an induction head predicts (each repeat but its first token)."""
    ids = torch.randint(3, args.vocab, (args.batch, args.length), generator=generator)
    mask = torch.zeros(args.batch, args.length, dtype=torch.bool)
    half = args.length // 2
    if args.halves != "none":
        chunks = half // args.span
        for row in range(args.batch):
            order = torch.randperm(chunks, generator=generator) if args.halves == "shuffled" else torch.arange(chunks)
            for place, chunk in enumerate(order.tolist()):
                target, source = half + place * args.span, chunk * args.span
                ids[row, target : target + args.span] = ids[row, source : source + args.span]
                mask[row, target + 1 : target + args.span] = True
        return ids, mask
    for row in range(args.batch):
        for _ in range(args.spans):
            source = int(torch.randint(0, half - args.span, (1,), generator=generator))
            target = int(torch.randint(half, args.length - args.span, (1,), generator=generator))
            ids[row, target : target + args.span] = ids[row, source : source + args.span]
            mask[row, target + 1 : target + args.span] = True
    return ids, mask


def near_batch(args: argparse.Namespace, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (span, 0..max_gap random tokens, the span again): solvable by position alone, nearly."""
    rows, masks = [], []
    for _ in range(args.batch):
        ids: list[int] = []
        mask: list[bool] = []
        while len(ids) < args.length:
            span = torch.randint(3, args.vocab, (args.span,), generator=generator).tolist()
            gap_length = int(torch.randint(0, args.max_gap + 1, (1,), generator=generator))
            gap = torch.randint(3, args.vocab, (gap_length,), generator=generator).tolist()
            ids += span + gap + span
            mask += [False] * (args.span + gap_length + 1) + [True] * (args.span - 1)
        rows.append(ids[: args.length])
        masks.append(mask[: args.length])
    return torch.tensor(rows), torch.tensor(masks)


def pairs_batch(args: argparse.Namespace, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of segments (a b a b ..., 4-16 tokens, a new pair each). Each token after a segment's first two
    repeats the token two back: predicting it takes the previous token's identity at the current position,
    which is what a previous-token head (the first half of an induction circuit) provides."""
    rows, masks = [], []
    for _ in range(args.batch):
        ids: list[int] = []
        mask: list[bool] = []
        while len(ids) < args.length:
            a, b = torch.randint(3, args.vocab, (2,), generator=generator).tolist()
            n = int(torch.randint(4, 17, (1,), generator=generator))
            ids += [a, b] * (n // 2)
            mask += [False, False] + [True] * (2 * (n // 2) - 2)
        rows.append(ids[: args.length])
        masks.append(mask[: args.length])
    return torch.tensor(rows), torch.tensor(masks)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config_class, model_class = (
        (Qwen3Config, Qwen3ForCausalLM) if args.arch == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    )
    config = config_class(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.heads, head_dim=64, tie_word_embeddings=True,
                          rope_theta=args.rope_theta, initializer_range=args.init_std)  # fmt: skip
    model = model_class(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1)
    near = argparse.Namespace(**{**vars(args), "max_gap": args.gap})
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 20)
        if args.max_gap >= 0 or step <= args.near_steps:
            ids, mask = near_batch(near if args.max_gap < 0 else args, generator)
        else:
            ids, mask = far_batch(args, generator)
        far_rows = torch.ones(args.batch, 1, dtype=torch.bool)  # the rows accuracy is read on
        if args.max_gap < 0 and step > args.near_steps and args.pairs_share > 0:  # the first rows: pairs
            rows = round(args.pairs_share * args.batch)
            pair_ids, pair_mask = pairs_batch(args, generator)
            ids[:rows], mask[:rows], far_rows[:rows] = pair_ids[:rows], pair_mask[:rows], False
        if args.max_gap < 0 and step > args.near_steps and args.near_share > 0:  # the last rows: near repeats
            rows = round(args.near_share * args.batch)
            near_ids, near_mask = near_batch(near, generator)
            ids[-rows:], mask[-rows:], far_rows[-rows:] = near_ids[:rows], near_mask[:rows], False
        logits = model(input_ids=ids).logits[:, :-1]
        where = mask[:, 1:]
        loss = F.cross_entropy(logits[where], ids[:, 1:][where])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.every == 0:
            read = where & far_rows
            accuracy = float((logits[read].argmax(-1) == ids[:, 1:][read]).float().mean())
            point = {"step": step, "seconds": round(time.perf_counter() - start, 1), "loss": round(loss.item(), 3),
                     "accuracy": round(accuracy, 3)}  # fmt: skip
            print(json.dumps(point), flush=True)


if __name__ == "__main__":
    main()
