"""Generate the synthetic world and write it to a folder.

``generate_world`` is pure (same config, same bytes); ``write_world`` writes into a
temporary sibling folder and renames it into place, so an interrupted or failed run
never leaves a half-written world behind.

Layout of a world folder::

    world.json                manifest: config, counts, file list
    corpus.jsonl              {"id", "contents": "Title\\ntext"}
    entities.jsonl            every entity and its facts (for analysis, not for the agent)
    sft.jsonl                 questions with the expert's steps, for the SFT warm start
    train.jsonl               the RL training pool
    val/<family>.jsonl        validation questions of one family
    test/<family>.jsonl       test questions of one family

Question rows are FlashRAG rows (``id``, ``question``, ``golden_answers``) plus ``family`` and ``hops``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lit_search_rl.checks import require_at_least
from lit_search_rl.data.synthetic.corpus import Corpus, build_corpus
from lit_search_rl.data.synthetic.entities import Entities, build_entities
from lit_search_rl.data.synthetic.names import NameFactory
from lit_search_rl.data.synthetic.questions import (
    FAMILIES,
    Question,
    chain_question,
    comparison_question,
    iterative_question,
)
from lit_search_rl.data.synthetic.schema import longest_chain
from lit_search_rl.io import atomic_output_dir, write_jsonl

FORMAT_VERSION = 1


@dataclass
class WorldConfig:
    """Size and shape of the synthetic world. The defaults generate in a few seconds."""

    seed: int = 0
    """Seed of every random choice; the same seed and sizes give byte-identical files."""
    num_countries: int = 6
    """Number of countries."""
    num_cities: int = 30
    """Number of cities (at least one per country, so that each country has a capital)."""
    num_people: int = 120
    """Number of people (directors, founders, singers and others)."""
    num_companies: int = 40
    """Number of companies."""
    num_films: int = 60
    """Number of films."""
    num_bands: int = 30
    """Number of bands."""
    num_distractors: int = 60
    """Number of distractor passages that name entities without stating any asked-for fact."""
    max_hops: int = 4
    """Longest relation chain a question may need (chain and iterative families)."""
    num_sft: int = 1500
    """Questions with expert trajectories for the SFT warm start, spread evenly over the families."""
    num_train: int = 1500
    """Questions in the RL training pool, spread evenly over the families."""
    num_val: int = 50
    """Validation questions per family."""
    num_test: int = 100
    """Test questions per family."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible option."""
        minimum = {
            "num_countries": 1,
            "num_people": 2,
            "num_companies": 2,
            "num_films": 2,
            "num_bands": 2,
            "num_distractors": 0,
            "num_sft": 0,
            "num_train": 0,
            "num_val": 0,
            "num_test": 0,
        }
        for name, low in minimum.items():
            require_at_least(self, [name], low)
        if self.num_cities < max(2, self.num_countries):
            raise ValueError(
                f"--num_cities must be at least --num_countries and at least 2 (got {self.num_cities} cities "
                f"for {self.num_countries} countries)"
            )
        longest = longest_chain()
        if not 2 <= self.max_hops <= longest:
            raise ValueError(
                f"--max_hops must be between 2 and {longest}, the longest relation chain this world's schema "
                f"allows (got {self.max_hops})"
            )


@dataclass
class World:
    """A generated world: entities, corpus and question splits."""

    config: WorldConfig
    entities: Entities
    corpus: Corpus
    splits: dict[str, list[Question]]
    """``sft``, ``train``, ``val/<family>`` and ``test/<family>`` -> questions."""


def _sampler(family: str, world: tuple[Entities, Corpus], max_hops: int) -> Callable[[random.Random], Question | None]:
    entities, corpus = world
    if family == "chain":
        return lambda rng: chain_question(entities, corpus, rng, rng.randint(1, max_hops))
    if family == "iterative":
        return lambda rng: iterative_question(entities, corpus, rng, rng.randint(2, max_hops))
    return lambda rng: comparison_question(entities, corpus, rng)


def _draw_unique(family: str, count: int, sample: Callable, rng: random.Random, seen: set[str]) -> list[Question]:
    """``count`` questions with texts not in ``seen``; gives up once draws stop finding new ones."""
    questions: list[Question] = []
    patience = 1000 + 2 * count
    misses = 0
    while len(questions) < count and misses < patience:
        q = sample(rng)
        if q is None or q.question in seen:
            misses += 1
            continue
        seen.add(q.question)
        questions.append(q)
        misses = 0
    if len(questions) < count:
        raise ValueError(
            f"only about {len(questions)} distinct {family} questions fit a world of this size but {count} are "
            "needed; lower --num_sft/--num_train/--num_val/--num_test or raise the entity counts (--num_people, ...)"
        )
    return questions


def _even_split(total: int) -> list[int]:
    """``total`` spread over the families, the remainder going to the first ones."""
    base, extra = divmod(total, len(FAMILIES))
    return [base + (1 if i < extra else 0) for i in range(len(FAMILIES))]


def generate_world(config: WorldConfig) -> World:
    """Generate entities, corpus and splits; deterministic in ``config``.

    Every question text is unique across all splits, so no question is shared between
    SFT, RL training, validation and test.
    """
    config.validate()
    rng = random.Random(config.seed)
    names = NameFactory(rng)
    entities = build_entities(
        rng,
        names,
        num_countries=config.num_countries,
        num_cities=config.num_cities,
        num_people=config.num_people,
        num_companies=config.num_companies,
        num_films=config.num_films,
        num_bands=config.num_bands,
    )
    corpus = build_corpus(entities, config.num_distractors, rng, names)

    splits: dict[str, list[Question]] = {"sft": [], "train": []}
    seen: set[str] = set()
    sft_counts, train_counts = _even_split(config.num_sft), _even_split(config.num_train)
    for i, family in enumerate(FAMILIES):
        total = config.num_test + config.num_val + train_counts[i] + sft_counts[i]
        drawn = _draw_unique(family, total, _sampler(family, (entities, corpus), config.max_hops), rng, seen)
        # Unique texts run out sooner for short chains, so late draws skew long; shuffling
        # before the split gives every split the same mix of hops.
        rng.shuffle(drawn)
        splits[f"test/{family}"] = drawn[: config.num_test]
        splits[f"val/{family}"] = drawn[config.num_test : config.num_test + config.num_val]
        rest = drawn[config.num_test + config.num_val :]
        splits["train"] += rest[: train_counts[i]]
        splits["sft"] += rest[train_counts[i] :]
    rng.shuffle(splits["train"])
    rng.shuffle(splits["sft"])
    return World(config=config, entities=entities, corpus=corpus, splits=splits)


def question_row(question: Question, qid: str, with_steps: bool = False) -> dict:
    """The JSON-lines row of a question; ``with_steps`` adds the expert's plan."""
    row = {
        "id": qid,
        "question": question.question,
        "golden_answers": question.golden_answers,
        "family": question.family,
        "hops": question.hops,
    }
    if with_steps:
        row["rule"] = question.rule
        row["steps"] = [asdict(step) for step in question.steps]
    return row


def write_world(world: World, out: Path, overwrite: bool = False) -> dict:
    """Write ``world`` to ``out`` atomically and return its manifest."""
    with atomic_output_dir(out, overwrite) as tmp:
        write_jsonl(tmp / "corpus.jsonl", (p.to_row() for p in world.corpus.passages))
        write_jsonl(
            tmp / "entities.jsonl",
            ({"id": e.id, "kind": e.kind, "name": e.name, "facts": e.facts} for e in world.entities.by_id.values()),
        )
        files = {"corpus": "corpus.jsonl", "entities": "entities.jsonl"}
        for split, questions in world.splits.items():
            prefix = split.replace("/", "-")
            rows = (question_row(q, f"{prefix}-{i:05d}", with_steps=split == "sft") for i, q in enumerate(questions))
            write_jsonl(tmp / f"{split}.jsonl", rows)
            files[split] = f"{split}.jsonl"
        manifest = {
            "format_version": FORMAT_VERSION,
            "config": asdict(world.config),
            "counts": {
                "entities": len(world.entities.by_id),
                "passages": len(world.corpus.passages),
                **{split: len(qs) for split, qs in world.splits.items()},
            },
            "files": files,
        }
        (tmp / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
