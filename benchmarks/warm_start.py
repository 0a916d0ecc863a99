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
import itertools
import json
import math
import random
import re
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_search_rl.data import sft as sft_data
from lit_search_rl.data.sft import ExpertSet, LengthGroupedBatches, expert_examples, fresh_world_seed
from lit_search_rl.data.synthetic.names import NameFactory
from lit_search_rl.data.synthetic.questions import Step
from lit_search_rl.data.synthetic.schema import RELATIONS
from lit_search_rl.data.synthetic.world import WorldConfig, generate_world, write_world
from lit_search_rl.models.tiny import TinyModelConfig, build_model, train_tokenizer, world_texts
from lit_search_rl.retrieval.base import Document, split_contents
from lit_search_rl.rollout.encoding import pad_batch
from lit_search_rl.rollout.tags import TAGS, THINK_CLOSE, THINK_OPEN
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
    p.add_argument("--init_std", type=float, default=0.0, help="Initialisation std of the weights; 0 for 0.02.")
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
    p.add_argument("--arch", choices=("qwen3", "llama"), default="qwen3", help="The tiny model's decoder layout.")
    p.add_argument(
        "--induction_steps",
        type=int,
        default=0,
        help="Steps on random token sequences repeated once (induction drills) before the trajectories.",
    )
    p.add_argument(
        "--fact_sentences",
        action="store_true",
        help="Information blocks hold only the sentence that states the fact (with top_k 0).",
    )
    p.add_argument(
        "--drill",
        choices=("repeat", "mqar", "chunks"),
        default="repeat",
        help="repeat: a random sequence then the same again; mqar: random key-value pairs, then the keys "
        "in a new order, each followed by its value (multi-query associative recall); chunks: a random sequence "
        "then its 4-token chunks in a new order, the loss on every chunk token after the first (the dense "
        "content-copy rows of induction_drill.py --halves shuffled).",
    )
    p.add_argument(
        "--induction_mix",
        type=float,
        default=0.0,
        help="Weight of an induction-drill batch added to every trajectory step (0: none).",
    )
    p.add_argument(
        "--induction_length", type=int, default=32, help="Length of the sequence an induction drill repeats."
    )
    p.add_argument("--eval_top_k", type=int, default=3, help="Passages per query in the held-out trajectories.")
    p.add_argument("--pretrain_length", type=int, default=256, help="Row length of the passage pretraining.")
    p.add_argument("--info_weight", type=float, default=0.0, help="LM loss weight on the information blocks.")
    p.add_argument("--fresh_size", type=int, default=500, help="Trajectories per fresh world.")
    p.add_argument("--max_hops", type=int, default=3)
    p.add_argument(
        "--names",
        type=int,
        default=0,
        help="Draw every world's name words from one fixed inventory of this many words, each made a single "
        "token of the tokenizer (0: fresh syllable words per world, split by BPE).",
    )
    p.add_argument(
        "--verbatim_think",
        action="store_true",
        help="With --fact_sentences: the expert's thought after a search restates the fact's sentence word for "
        "word (its subject named) instead of the relation's fixed statement.",
    )
    p.add_argument("--save", type=Path, default=None, help="Save the trained model and tokenizer here.")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def fact_documents(contents: dict[str, str]):
    """A search engine that answers each expert query with the one sentence of its passage that states the fact."""

    def documents_for(searches):
        documents = []
        for search in searches:
            title, _ = split_contents(contents[search.doc_ids[0]])
            documents.append(Document(search.doc_ids[0], title, fact_sentence(contents, search)))
        return documents

    return documents_for


def subject_named(sentence: str, subject: str) -> str:
    """``sentence`` with a leading reference such as "The film" replaced by the subject's name."""
    return re.sub(r"^The (city|country|company|film|band) (?!of )", subject + " ", sentence)


def fact_sentence(contents: dict[str, str], search) -> str:
    """The sentence of the search's first gold passage that states what it learns, its subject named."""
    title, text = split_contents(contents[search.doc_ids[0]])
    stating = [s for x in re.split(r"(?<=\.) ", text) if search.learns in (s := subject_named(x, title))]
    # A lookup by description learns a name from the sentence that also names what it was asked about.
    return next((x for x in stating if search.about in x), stating[0])


def verbatim(expert: ExpertSet) -> ExpertSet:
    """The expert's thoughts with each learnt fact restated as the sentence that states it."""
    contents = {row["id"]: row["contents"] for row in expert.corpus}
    questions = []
    for question, steps in expert.questions:
        steps = [Step(s.think, list(s.searches), s.answer) for s in steps]
        for before, after in zip(steps, steps[1:], strict=False):
            for search in before.searches:
                parts = re.split(r"(?<=\.) ", after.think)
                for i, part in enumerate(parts):
                    if search.learns in part and search.about in part and not part.startswith("Now I need"):
                        parts[i] = fact_sentence(contents, search)
                        break
                after.think = " ".join(parts)
        questions.append((question, steps))
    return ExpertSet(questions, expert.corpus, expert.names)


def inventory_words(size: int) -> list[str]:
    """A fixed inventory of name words, the same in every world."""
    factory = NameFactory(random.Random("name-inventory"))
    return [factory.word() for _ in range(size)]


def use_inventory(words: list[str]) -> None:
    """Make every NameFactory draw its words from ``words`` (distinct within one factory)."""

    def word(self, min_syllables: int = 2, max_syllables: int = 3) -> str:
        if not hasattr(self, "_left"):
            self._left = list(words)
            self._rng.shuffle(self._left)
        return self._left.pop()

    NameFactory.word = word


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
        text = passage.contents + "\n"
        if passage.id in facts:
            text += f"{THINK_OPEN} {' '.join(facts[passage.id])} {THINK_CLOSE}\n"
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


def tag_context(ids: torch.Tensor, tag_ids: dict[str, int]) -> torch.Tensor:
    """(B, T) code of the block each token is in: 0 none, 1 think, 2 search, 3 answer."""
    context = torch.zeros_like(ids)
    for row in range(ids.shape[0]):
        current = 0
        for t, token in enumerate(ids[row].tolist()):
            if token in (tag_ids["<think>"], tag_ids["<search>"], tag_ids["<answer>"]):
                current = {tag_ids["<think>"]: 1, tag_ids["<search>"]: 2, tag_ids["<answer>"]: 3}[token]
            elif token in (tag_ids["</think>"], tag_ids["</search>"], tag_ids["</answer>"]):
                current = 0
            context[row, t] = current
    return context


@torch.no_grad()
def evaluate(
    policy, batches: list[dict], tag_ids: dict[str, int] | None = None, spaced: torch.Tensor | None = None
) -> dict[str, float]:
    policy.eval()
    totals, nll_sum, n_tok = [0, 0, 0, 0], 0.0, 0
    by_block = {name: [0, 0] for name in ("think", "search", "answer", "first", "rest")}
    for batch in batches:
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if tag_ids is not None:
            context = tag_context(batch["input_ids"], tag_ids)[:, 1:]
            right = logits[:, :-1].argmax(-1) == batch["input_ids"][:, 1:]
            copies = batch["copy_mask"][:, 1:].bool()
            for code, name in ((1, "think"), (2, "search"), (3, "answer")):
                where = copies & (context == code)
                by_block[name][0] += int((right & where).sum())
                by_block[name][1] += int(where.sum())
            # First token of each copied word (after a space or a non-copy token) against its continuations.
            ids = batch["input_ids"][:, 1:]
            starts = copies & (~batch["copy_mask"][:, :-1].bool() | torch.isin(ids, spaced))
            for where, name in ((starts, "first"), (copies & ~starts, "rest")):
                by_block[name][0] += int((right & where).sum())
                by_block[name][1] += int(where.sum())
        counts = copy_counts(logits[:, :-1], batch["input_ids"][:, 1:], batch["copy_mask"][:, 1:])
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        mask = batch["loss_mask"][:, 1:].bool()
        nll = F.cross_entropy(logits[:, :-1][mask].float(), batch["input_ids"][:, 1:][mask], reduction="sum")
        nll_sum, n_tok = nll_sum + float(nll), n_tok + int(mask.sum())
    policy.train()
    right, copied, exact, trajectories = totals
    blocks = {f"copy_in_{name}": r / max(1, n) for name, (r, n) in by_block.items() if n}
    return {"copy_accuracy": right / copied, "copy_exact": exact / trajectories, "val_loss": nll_sum / n_tok, **blocks}


def main() -> None:
    args = parse()
    if args.fact_sentences:
        sft_data.gold_documents = fact_documents  # expert_examples renders top_k 0 through this name
    words = inventory_words(args.names) if args.names else []
    if words:
        use_inventory(words)
    expert_set = verbatim if args.verbatim_think else (lambda expert: expert)
    torch.manual_seed(args.seed)
    test_config = WorldConfig(seed=args.seed, max_hops=args.max_hops, num_sft=300, num_train=900, num_val=20,
                              num_test=100)  # fmt: skip
    folder = Path(tempfile.mkdtemp()) / "world"
    write_world(generate_world(test_config), folder)
    texts = world_texts(folder)
    if words:  # each inventory word often enough, after a space, that BPE merges it into one token
        texts = itertools.chain(texts, (" ".join(words),) * 50)
    tokenizer = train_tokenizer(texts, args.vocab)
    if words:
        whole = sum(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
        print(json.dumps({"inventory_words_as_one_token": whole / len(words)}), flush=True)
    shape = TinyModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                            num_heads=args.heads, num_kv_heads=args.kv_heads,
                            intermediate_size=args.intermediate or 3 * args.hidden, seed=args.seed,
                            architecture=args.arch)  # fmt: skip
    policy = build_model(shape, tokenizer)
    if args.init_std:
        torch.manual_seed(args.seed)
        policy.config.initializer_range = args.init_std
        policy.init_weights()
    policy.train()
    held_out, _ = expert_examples(tokenizer, expert_set(ExpertSet.from_folder(folder)), args.eval_top_k, 3, 1024)
    random.Random(args.seed).shuffle(held_out)
    val = [pad_batch(held_out[i : i + 16], tokenizer.pad_token_id) for i in range(0, 64, 16)]

    tag_ids = {tag: tokenizer.convert_tokens_to_ids(tag) for tag in TAGS}
    spaced = torch.tensor([i for t, i in tokenizer.get_vocab().items() if t.startswith("\u0120")])
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

    curve.append({"seconds": 0.0, "steps": 0, "tokens": 0, **evaluate(policy, val, tag_ids, spaced)})
    ordinary = torch.tensor(sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids) - set(tag_ids.values())))
    generator = torch.Generator().manual_seed(args.seed)
    n = args.induction_length

    def drill_loss() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Next-token loss on the repeated half of random token sequences, its logits and the ids."""
        first = ordinary[torch.randint(0, len(ordinary), (args.batch, n), generator=generator)]
        if args.drill == "repeat":
            ids = torch.cat([first, first], 1)  # (B, 2n): the second half repeats the first
            logits = policy(input_ids=ids).logits[:, n - 1 : -1]
            return F.cross_entropy(logits.flatten(0, 1), ids[:, n:].flatten()), logits, ids[:, n:]
        if args.drill == "chunks":
            chunks = first.view(args.batch, n // 4, 4)
            order = torch.argsort(torch.rand(args.batch, n // 4, generator=generator), dim=1)  # (B, n/4)
            shuffled = torch.gather(chunks, 1, order[..., None].expand(-1, -1, 4)).flatten(1)  # (B, n)
            ids = torch.cat([first, shuffled], 1)  # (B, 2n)
            inside = (torch.arange(n) % 4 != 0).expand(args.batch, n)  # each chunk's tokens after its first
            logits = policy(input_ids=ids).logits[:, n - 1 : -1][inside].view(args.batch, -1, policy.config.vocab_size)
            targets = ids[:, n:][inside].view(args.batch, -1)
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), logits, targets
        # n // 2 pairs (key, value); then the pairs again in a random order: each value follows its key.
        order = torch.argsort(torch.rand(args.batch, n // 2, generator=generator), dim=1)  # (B, n/2)
        pairs = first.view(args.batch, n // 2, 2)
        asked = torch.gather(pairs, 1, order[..., None].expand(-1, -1, 2)).flatten(1)  # (B, n)
        ids = torch.cat([first, asked], 1)  # (B, 2n)
        logits = policy(input_ids=ids).logits[:, n:-1:2]  # at each asked key: predict its value
        targets = ids[:, n + 1 :: 2]
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), logits, targets

    if args.induction_steps:
        started = time.perf_counter()
        for drill_step in range(args.induction_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(steps)
            loss, logits, ids = drill_loss()
            if drill_step % 25 == 24:
                accuracy = float((logits.argmax(-1) == ids).float().mean())
                seconds = round(trained + time.perf_counter() - started, 1)
                print(json.dumps({"drill_step": drill_step + 1, "seconds": seconds, "drill_accuracy": accuracy}),
                      flush=True)  # fmt: skip
                if accuracy >= 0.95 and args.seconds <= 1:
                    break
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            tokens += ids.numel()
        drill_accuracy = float((logits.argmax(-1) == ids).float().mean())
        trained += time.perf_counter() - started
        curve.append({"seconds": round(trained, 1), "steps": steps, "tokens": tokens, "drill_accuracy": drill_accuracy,
                      **evaluate(policy, val, tag_ids, spaced)})  # fmt: skip
        print(json.dumps(curve[-1]), flush=True)
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
            examples, _ = expert_examples(tokenizer, expert_set(ExpertSet.from_world(world)), top_k, 3, 1024)
        trained += time.perf_counter() - started
        order = LengthGroupedBatches([len(e["input_ids"]) for e in examples], args.batch, f"{args.seed}-{epoch}")
        for indices in order:
            started = time.perf_counter()
            batch = pad_batch([examples[i] for i in indices], tokenizer.pad_token_id)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(steps)
            loss = losses(policy, batch, args.info_weight)
            if args.induction_mix > 0:
                loss = loss + args.induction_mix * drill_loss()[0]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            tokens += int(batch["attention_mask"].sum())
            trained += time.perf_counter() - started
            if total_steps is None and steps == args.induction_steps + 30:
                total_steps = int(steps * args.seconds / trained)
            if trained >= next_eval or trained >= args.seconds:
                point = {"seconds": round(trained, 1), "steps": steps, "tokens": tokens, "loss": float(loss.detach()),
                         **evaluate(policy, val, tag_ids, spaced)}  # fmt: skip
                curve.append(point)
                print(json.dumps(point), flush=True)
                next_eval += args.eval_every
            if trained >= args.seconds:
                done = True
                break
        epoch += 1
    if args.save:
        policy.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params = sum(p.numel() for p in policy.parameters())
    args.out.write_text(json.dumps({"settings": settings, "parameters": params, "curve": curve}, indent=1) + "\n")


if __name__ == "__main__":
    main()
