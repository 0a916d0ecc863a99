"""Can a policy learn to compare two years? Dense synthetic comparisons, trained and tested in isolation.

The comparison family of the synthetic world asks which of two entities came earlier or later. This probe
takes a policy (the demo's SFT warm start, say), trains a copy of it on rows of freshly drawn comparisons
with the loss on the answer only, and reports held-out accuracy of each decision as the share of
comparisons where the right token outscores the wrong one (0.5 is chance). Formats:

* ``direct``: "Which film was released later, A or B? A came out in 1913. B came out in 1942." -> " B";
  comparing and finding the name are one step.
* ``cot``: "... In 1913 A came out. In 1942 B came out. The later year is" -> " 1942 B.": first the year
  (reported as ``year``), then the name that follows that year earlier in the row (``lookup``, scored with
  the right year given), which a model that copies by content can find.
* ``cot-comma``: the same with "In 1913, A came out.", where the token after the year is a comma, so the
  lookup needs more than the previous token.

``--number-sense S`` first adds to the embedding of every four-digit number token a component along one
random direction, proportional to the number (from -S to +S times the embedding's norm): the order of the
years, which a pretrained model brings and a model trained from scratch has to learn.

    .venv/bin/python benchmarks/comparison_probe.py --model runs/demo/sft-model --world runs/demo/world \\
        --format cot --number-sense 1.0
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_search_rl.data.synthetic.names import NameFactory
from lit_search_rl.io import read_jsonl
from lit_search_rl.rollout.encoding import pad_batch
from lit_search_rl.sft import next_token_predictions, token_nll


def year_tokens(tokenizer: PreTrainedTokenizerBase, world: Path) -> list[int]:
    """The world's years that are one token after a space, sorted."""
    years = {v for row in read_jsonl(world / "entities.jsonl") for v in row["facts"].values() if isinstance(v, int)}
    return sorted(y for y in years if len(tokenizer(f" {y}")["input_ids"]) == 1)


def add_number_sense(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, scale: float, seed: int) -> int:
    """Add the value of each four-digit number token along one random direction; returns the tokens changed."""
    numbers = {}
    for token, index in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if len(text) == 4 and text.isdigit():
            numbers[index] = int(text)
    low, high = min(numbers.values()), max(numbers.values())
    embedding = model.get_input_embeddings().weight
    direction = torch.randn(embedding.shape[1], generator=torch.Generator().manual_seed(seed))
    direction /= direction.norm()
    with torch.no_grad():
        for index, value in numbers.items():
            embedding[index] += scale * embedding[index].norm() * (2 * (value - low) / (high - low) - 1) * direction
    return len(numbers)


class Rows:
    """Rows of ``per_row`` comparisons in one format, with the positions and token pairs each decision is
    scored on."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, years: list[int], form: str, seed: int, per_row: int = 5):
        self.tokenizer, self.years, self.form, self.per_row = tokenizer, years, form, per_row
        self.rng, self.names = random.Random(seed), NameFactory(random.Random(seed + 1))

    def first_id(self, text: str) -> int:
        """The id ``text`` starts with after a space: the token a decision between two options is scored on."""
        return self.tokenizer(f" {text}")["input_ids"][0]

    def one(self) -> tuple[list[int], list[int], list[tuple[str, int, int, int]]]:
        """Ids, loss mask and decisions ``(name, position, right id, wrong id)`` of one comparison."""
        a, b = (f"{self.names.word()} {self.names.word()}" for _ in range(2))
        year_a, year_b = self.rng.sample(self.years, 2)
        rule = self.rng.choice(["earlier", "later"])
        pick_a = (year_a < year_b) == (rule == "earlier")
        (year, answer), (other_year, other) = ((year_a, a), (year_b, b)) if pick_a else ((year_b, b), (year_a, a))
        question = f"Which film was released {rule}, {a} or {b}?"
        if self.form == "direct":
            context, target = f"{question} {a} came out in {year_a}. {b} came out in {year_b}.", f" {answer}"
        else:
            comma = "," if self.form == "cot-comma" else ""
            facts = f"In {year_a}{comma} {a} came out. In {year_b}{comma} {b} came out."
            context, target = f"{question} {facts} The {rule} year is", f" {year}{comma} {answer}."
        ids, target_ids = self.tokenizer(context)["input_ids"], self.tokenizer(target)["input_ids"]
        at = len(ids) - 1  # the position whose next token is the target's first
        decisions = []
        if self.form == "direct":
            decisions.append(("name", at, self.first_id(answer), self.first_id(other)))
        else:
            decisions.append(("year", at, self.first_id(str(year)), self.first_id(str(other_year))))
            name_at = at + len(self.tokenizer(f" {year}{comma}")["input_ids"])
            decisions.append(("lookup", name_at, self.first_id(answer), self.first_id(other)))
        # names whose first tokens agree cannot be told apart by the first token: not scored
        decisions = [d for d in decisions if d[2] != d[3]]
        return ids + target_ids, [0] * len(ids) + [1] * len(target_ids), decisions

    def row(self) -> tuple[list[int], list[int], list[tuple[str, int, int, int]]]:
        """``per_row`` comparisons back to back, with their decisions' positions in the row."""
        ids: list[int] = []
        mask: list[int] = []
        decisions: list[tuple[str, int, int, int]] = []
        for _ in range(self.per_row):
            more_ids, more_mask, more = self.one()
            decisions += [(name, len(ids) + at, right, wrong) for name, at, right, wrong in more]
            ids, mask = ids + more_ids, mask + more_mask
        return ids, mask, decisions


@torch.no_grad()
def accuracy(model: PreTrainedModel, rows: Rows, count: int) -> dict[str, float]:
    """Share of decisions where the right token's logit beats the wrong one's, per decision."""
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for _ in range(count):
        ids, _, decisions = rows.row()
        logits = model(torch.tensor([ids])).logits[0]
        for name, at, good, bad in decisions:
            right[name] = right.get(name, 0) + int(logits[at, good] > logits[at, bad])
            total[name] = total.get(name, 0) + 1
    return {name: round(right[name] / total[name], 3) for name in total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Policy folder (the demo's sft-model).")
    parser.add_argument("--world", type=Path, required=True, help="The synthetic world it was trained on.")
    parser.add_argument("--format", choices=["direct", "cot", "cot-comma"], default="cot")
    parser.add_argument("--number-sense", type=float, default=0.0, help="Scale of the years' order; 0 adds none.")
    parser.add_argument("--steps", type=int, default=300, help="Optimizer steps of 16 rows.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=50, help="Test every this many steps.")
    parser.add_argument("--test-rows", type=int, default=60, help="Held-out rows per test.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="Append the run as one JSON line here.")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a model folder (no config.json)")
    if not (args.world / "entities.jsonl").is_file():
        parser.error(f"--world {args.world} is not a synthetic world folder (no entities.jsonl)")

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    if args.number_sense:
        add_number_sense(model, tokenizer, args.number_sense, args.seed)
    years = year_tokens(tokenizer, args.world)
    train = Rows(tokenizer, years, args.format, seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def held_out() -> dict[str, float]:
        # the same held-out rows at every test
        return accuracy(model.eval(), Rows(tokenizer, years, args.format, seed=10_000), args.test_rows)

    curve = [(0, held_out())]
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        rows = [train.row() for _ in range(16)]
        batch = pad_batch([{"input_ids": ids, "loss_mask": mask} for ids, mask, _ in rows], tokenizer.pad_token_id)
        logits, targets, (mask,) = next_token_predictions(model, batch, [batch["loss_mask"]])
        loss = token_nll(logits, targets, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            curve.append((step, held_out()))
            print(f"step {step}  loss {loss.item():.3f}  accuracy {curve[-1][1]}  {time.perf_counter() - start:.0f} s",
                  flush=True)  # fmt: skip
    if args.results:
        record = {"format": args.format, "number_sense": args.number_sense, "steps": args.steps, "lr": args.lr,
                  "seed": args.seed, "model": str(args.model), "curve": curve}  # fmt: skip
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
